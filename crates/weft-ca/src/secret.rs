//! The one place weft makes secrets and writes them to disk.
//!
//! Randomness for anything an attacker must not guess — bootstrap tokens,
//! certificate serial numbers, key material — comes from the operating
//! system's CSPRNG ([`random_bytes`], through `getrandom`), never from a
//! fast statistical generator (a test keeps `fastrand` out of this crate
//! and of `weft up`).
//!
//! Files holding secrets (tokens, private keys, persisted certificates)
//! are written by [`write_private`]: a temporary file created with mode
//! 0600 in the same directory (so it is never readable by others, not even
//! for a moment), written, flushed to disk, then renamed over the target
//! (readers see the old file or the new one, never half of one).
//! Directories that hold them are created 0700 ([`private_dir`]). A key
//! file that group or others can read is refused ([`check_private`]).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a secret could not be made, written or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The operating system's random generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A secret file other users can read.
    #[error(
        "refusing to use {path}: group or other users can read it (mode {mode:o}); run: chmod 600 {path}"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SecretError + '_ {
    move |source| SecretError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], SecretError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(bytes)
}

/// A token of `len` lowercase letters and digits from the CSPRNG (about
/// 5.2 bits each; 32 characters carry 165 bits).
pub fn random_token(len: usize) -> Result<String, SecretError> {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<64>()? {
            // Rejection sampling keeps every character equally likely.
            if usize::from(b) < 252 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b) % 36]));
            }
        }
    }
    Ok(out)
}

/// Creates `dir` (and its parents) if missing, and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), SecretError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(io(dir))?;
        // An existing directory may be wider: narrow it (never widen).
        let mode = std::fs::metadata(dir)
            .map_err(io(dir))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(io(dir))?;
        }
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(io(dir))?;
    Ok(())
}

/// Writes `contents` to `path` atomically with mode 0600: a temporary file
/// created 0600 beside it, written and synced, then renamed over `path`.
/// The file is never readable by others at any moment.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), SecretError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "secret".into(), |n| n.to_string_lossy().into_owned());
    let tag: String = random_bytes::<6>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let temp = dir.join(format!(".{name}.{tag}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(SecretError::Io {
            path: path.to_owned(),
            source: e,
        });
    }
    Ok(())
}

/// Refuses a secret file that group or other users can read.
pub fn check_private(path: &Path) -> Result<(), SecretError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o044 != 0 {
            return Err(SecretError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn secrets_are_written_0600_atomically_and_replace_old_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("state/inner");
        private_dir(&dir).expect("dir");
        assert_eq!(mode(&dir), 0o700);
        let path = dir.join("token");
        // An older file with loose permissions is replaced, not reused.
        std::fs::write(&path, "old").expect("old");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, b"new secret").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new secret");
        assert_eq!(mode(&path), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("token")]);
    }

    #[test]
    fn an_existing_wide_directory_is_narrowed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("wide");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&dir).expect("dir");
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn readable_secrets_are_refused_with_advice() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("key.pem");
        for (bits, ok) in [(0o600, true), (0o400, true), (0o640, false), (0o604, false)] {
            std::fs::write(&path, "k").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bits)).expect("chmod");
            let checked = check_private(&path);
            assert_eq!(checked.is_ok(), ok, "mode {bits:o}");
            if let Err(e) = checked {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
    }

    #[test]
    fn tokens_use_the_whole_alphabet_and_differ() {
        let a = random_token(32).expect("token");
        let b = random_token(32).expect("token");
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }

    /// Secrets never come from `fastrand`: neither this crate nor `weft up`
    /// (which writes the bootstrap tokens) may use it.
    #[test]
    fn no_fast_generator_where_secrets_are_made() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let needle = concat!("fast", "rand");
        for file in [
            "Cargo.toml",
            "src/authority.rs",
            "src/secret.rs",
            "../weft/src/cmd/up.rs",
        ] {
            let text = std::fs::read_to_string(root.join(file)).expect("read");
            let uses = text
                .lines()
                .filter(|l| l.contains(needle) && !l.trim_start().starts_with("//"))
                .count();
            assert_eq!(uses, 0, "{file} uses {needle}");
        }
    }
}
