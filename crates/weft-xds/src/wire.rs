//! `envoy.service.discovery.v3.Resource`, written by hand on prost's
//! encoding functions so a resource can travel pre-encoded.
//!
//! The control plane encodes each resource once, when a configuration
//! change creates it (the resource set's entries); every session then
//! puts those bytes into its responses as they are, instead of copying
//! the resource into a message of its own and encoding it again. Decoding
//! (the proxies' side) reads the fields as the generated code would.
//! `ttl` and `cache_control` are neither sent nor read (skipped as
//! unknown fields), as before.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, message, skip_field, string};
use prost::{DecodeError, Message};
use prost_types::Any;

/// One resource of a delta response.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Resource {
    /// The resource's version.
    pub version: String,
    /// The resource itself.
    pub resource: Option<Any>,
    /// The resource's name.
    pub name: String,
    /// Other names of the resource.
    pub aliases: Vec<String>,
    /// The whole message, encoded already: sent as it is, in place of the
    /// fields above (which are then empty). Never set by decoding.
    pub encoded: Option<Bytes>,
}

impl Resource {
    /// A resource sent as the bytes [`Resource::encode_once`] made.
    pub fn pre_encoded(bytes: Bytes) -> Self {
        Resource {
            encoded: Some(bytes),
            ..Resource::default()
        }
    }

    /// Encodes `name`, `version` and `body` once, for
    /// [`Resource::pre_encoded`].
    pub fn encode_once(name: &str, version: &str, body: &Any) -> Bytes {
        // The fields in `encode_raw`'s order, written from borrowed values.
        fn text(tag: u32, value: &str, buf: &mut Vec<u8>) {
            prost::encoding::encode_key(tag, WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(value.len() as u64, buf);
            buf.put_slice(value.as_bytes());
        }
        let mut buf = Vec::with_capacity(name.len() + version.len() + body.encoded_len() + 16);
        text(1, version, &mut buf);
        message::encode(2, body, &mut buf);
        text(3, name, &mut buf);
        Bytes::from(buf)
    }
}

impl Message for Resource {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(bytes) = &self.encoded {
            buf.put_slice(bytes);
            return;
        }
        if !self.version.is_empty() {
            string::encode(1, &self.version, buf);
        }
        if let Some(resource) = &self.resource {
            message::encode(2, resource, buf);
        }
        if !self.name.is_empty() {
            string::encode(3, &self.name, buf);
        }
        string::encode_repeated(4, &self.aliases, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => string::merge(wire_type, &mut self.version, buf, ctx),
            2 => message::merge(
                wire_type,
                self.resource.get_or_insert_with(Any::default),
                buf,
                ctx,
            ),
            3 => string::merge(wire_type, &mut self.name, buf, ctx),
            4 => string::merge_repeated(wire_type, &mut self.aliases, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if let Some(bytes) = &self.encoded {
            return bytes.len();
        }
        let version = if self.version.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.version)
        };
        let name = if self.name.is_empty() {
            0
        } else {
            string::encoded_len(3, &self.name)
        };
        version
            + self
                .resource
                .as_ref()
                .map_or(0, |r| message::encoded_len(2, r))
            + name
            + string::encoded_len_repeated(4, &self.aliases)
    }

    fn clear(&mut self) {
        *self = Resource::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Any {
        Any {
            type_url: "type.googleapis.com/istio.workload.Address".into(),
            value: vec![1, 2, 3],
        }
    }

    /// Pre-encoded bytes are what encoding the fields gives, and decode
    /// back to the fields; unknown fields (ttl) are skipped.
    #[test]
    fn pre_encoded_equals_encoded_and_decodes_back() {
        let fields = Resource {
            version: "00000000000000ff".into(),
            resource: Some(body()),
            name: "shop/orders".into(),
            ..Resource::default()
        };
        let once = Resource::encode_once("shop/orders", "00000000000000ff", &body());
        assert_eq!(fields.encode_to_vec(), once.to_vec());
        let pre = Resource::pre_encoded(once.clone());
        assert_eq!(pre.encoded_len(), once.len());
        assert_eq!(pre.encode_to_vec(), once.to_vec());
        assert_eq!(Resource::decode(once.as_ref()).expect("decode"), fields);
        let mut with_ttl = once.to_vec();
        with_ttl.extend([0x32, 0x02, 0x08, 0x05]); // ttl { seconds: 5 }
        with_ttl.extend([0x22, 0x01, b'x']); // aliases: ["x"]
        let decoded = Resource::decode(with_ttl.as_slice()).expect("decode");
        assert_eq!(decoded.aliases, ["x"]);
        assert_eq!(decoded.name, "shop/orders");
    }
}
