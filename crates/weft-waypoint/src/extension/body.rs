//! Bodies and trailers through plugins ([`PluginBody`]): each data frame
//! is offered to every plugin that saw the request and has a body
//! callback (request bodies in chain order, response bodies in reverse),
//! as Envoy offers them: a plugin that answers `Pause` holds what it was
//! given and is offered it again with the next chunk (up to
//! [`MAX_HELD_BODY`]); `Continue` passes on what it left in the buffer
//! (rewritten or not). At the end of the body every plugin is offered
//! the end of stream (an empty chunk if need be), and whatever it still
//! holds passes on. HTTP calls a body callback makes are carried out in
//! the background, their answers handed to the plugin's root context.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use weft_wasm::Verdict;

use crate::extension::modules::Entry;
use crate::extension::stream::{Run, Stop, fail};

/// Most body bytes one plugin may hold (`Pause`) before the request
/// fails.
pub const MAX_HELD_BODY: usize = 4 << 20;

/// Why a body stopped.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body passed through a request's plugins.
pub struct PluginBody<B> {
    inner: B,
    run: Run,
    response: bool,
    out: VecDeque<Frame<Bytes>>,
    ended: bool,
    finished: bool,
}

impl<B> PluginBody<B> {
    /// `inner` through `run`'s plugins: the response's body when
    /// `response`, else the request's.
    pub fn new(inner: B, run: Run, response: bool) -> Self {
        PluginBody {
            inner,
            run,
            response,
            out: VecDeque::new(),
            ended: false,
            finished: false,
        }
    }
}

fn stopped(stop: Stop) -> BoxError {
    match stop {
        Stop::Respond(r) => format!("a plugin answered {} while reading the body", r.status).into(),
        Stop::Fail { plugin, reason } => format!("plugin {plugin} failed: {reason}").into(),
        Stop::ProcessorFailed { policy, reason } => {
            format!("external processor {policy} failed: {reason}").into()
        }
    }
}

impl Run {
    /// Offers `chunk` (and the end of the body, when `end`) to the
    /// plugins; what they pass on.
    fn body(&self, response: bool, chunk: Bytes, end: bool) -> Result<Bytes, Stop> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        let chain = &self.chain;
        let mut order: Vec<usize> = (0..chain.entries.len()).collect();
        if response {
            order.reverse();
        }
        let mut passing = chunk.to_vec();
        for i in order {
            let (Entry::Ready(f), Some(o)) = (&chain.entries[i], s.slots[i].opened) else {
                continue;
            };
            let reads = if response {
                f.wants.bodies.1
            } else {
                f.wants.bodies.0
            };
            if !reads || s.slots[i].skipped {
                continue;
            }
            let held = &mut s.slots[i].held[usize::from(response)];
            held.extend_from_slice(&passing);
            if held.is_empty() && !end {
                return Ok(Bytes::new());
            }
            let x = s.exchange.get_or_insert_with(Box::default);
            let buffer = if response {
                &mut x.response_body
            } else {
                &mut x.request_body
            };
            *buffer = std::mem::take(held);
            let outcome = f.with(o.slot, Some(o.generation), |inst| {
                let v = if response {
                    inst.response_body(o.context, x, end)?
                } else {
                    inst.request_body(o.context, x, end)?
                };
                Ok((v, inst.take_calls()))
            });
            let buffer = if response {
                &mut s.exchange.get_or_insert_with(Box::default).response_body
            } else {
                &mut s.exchange.get_or_insert_with(Box::default).request_body
            };
            let bytes = std::mem::take(buffer);
            let verdict = match outcome {
                Ok((_, (verdict, calls))) => {
                    if !calls.is_empty() {
                        let (f, o) = (f.clone(), o);
                        tokio::spawn(async move {
                            let mut x = Box::<weft_wasm::Exchange>::default();
                            let _ = f.answer(o.slot, o.generation, &mut x, calls).await;
                        });
                    }
                    verdict
                }
                Err(e) => {
                    s.slots[i].skipped = true;
                    match fail(&f.spec, e.to_string()) {
                        // Failed open: its input passes on untouched.
                        None => {
                            passing = bytes;
                            continue;
                        }
                        Some(stop) => return Err(stop),
                    }
                }
            };
            match verdict {
                Verdict::Pause if !end => {
                    if bytes.len() > MAX_HELD_BODY {
                        s.slots[i].skipped = true;
                        let reason = format!("it held more than {MAX_HELD_BODY} bytes of the body");
                        return match fail(&f.spec, reason) {
                            None => Ok(Bytes::from(bytes)),
                            Some(stop) => Err(stop),
                        };
                    }
                    s.slots[i].held[usize::from(response)] = bytes;
                    return Ok(Bytes::new());
                }
                // At the end a pause has nothing more to wait for.
                Verdict::Continue | Verdict::Pause => passing = bytes,
                Verdict::Respond(r) => return Err(Stop::Respond(r)),
                Verdict::Close => {
                    return Err(Stop::Fail {
                        plugin: f.spec.name.clone(),
                        reason: "it closed the stream".into(),
                    });
                }
            }
        }
        Ok(Bytes::from(passing))
    }

    /// Offers trailers to the plugins that read this direction.
    fn trailers(&self, response: bool, trailers: &mut http::HeaderMap) -> Result<(), Stop> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        let chain = &self.chain;
        for i in 0..chain.entries.len() {
            let (Entry::Ready(f), Some(o)) = (&chain.entries[i], s.slots[i].opened) else {
                continue;
            };
            if s.slots[i].skipped {
                continue;
            }
            let x = s.exchange.get_or_insert_with(Box::default);
            let map = if response {
                &mut x.response_trailers
            } else {
                &mut x.request_trailers
            };
            *map = std::mem::take(trailers);
            let outcome = f.with(o.slot, Some(o.generation), |inst| {
                if response {
                    inst.response_trailers(o.context, x)
                } else {
                    inst.request_trailers(o.context, x)
                }
            });
            *trailers = std::mem::take(if response {
                &mut s
                    .exchange
                    .get_or_insert_with(Box::default)
                    .response_trailers
            } else {
                &mut s.exchange.get_or_insert_with(Box::default).request_trailers
            });
            match outcome {
                Ok((_, Verdict::Respond(r))) => return Err(Stop::Respond(r)),
                Ok(_) => {}
                Err(e) => {
                    s.slots[i].skipped = true;
                    if let Some(stop) = fail(&f.spec, e.to_string()) {
                        return Err(stop);
                    }
                }
            }
        }
        Ok(())
    }

    fn stop(&self, stop: Stop) -> BoxError {
        let error = stopped(stop.clone());
        self.state.lock().unwrap_or_else(|p| p.into_inner()).stopped = Some(stop);
        error
    }
}

impl<B> Body for PluginBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = this.inner.is_end_stream();
                        this.ended |= end;
                        let passed = this
                            .run
                            .body(this.response, data, end)
                            .map_err(|s| this.run.stop(s))?;
                        if !passed.is_empty() {
                            this.out.push_back(Frame::data(passed));
                        }
                        this.finished |= end;
                    }
                    Err(frame) => {
                        if !this.ended {
                            this.ended = true;
                            let passed = this
                                .run
                                .body(this.response, Bytes::new(), true)
                                .map_err(|s| this.run.stop(s))?;
                            if !passed.is_empty() {
                                this.out.push_back(Frame::data(passed));
                            }
                        }
                        match frame.into_trailers() {
                            Ok(mut trailers) => {
                                this.run
                                    .trailers(this.response, &mut trailers)
                                    .map_err(|s| this.run.stop(s))?;
                                this.out.push_back(Frame::trailers(trailers));
                            }
                            Err(other) => this.out.push_back(other),
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    if !this.ended {
                        this.ended = true;
                        let passed = this
                            .run
                            .body(this.response, Bytes::new(), true)
                            .map_err(|s| this.run.stop(s))?;
                        if !passed.is_empty() {
                            this.out.push_back(Frame::data(passed));
                        }
                    }
                    this.finished = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.out.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // Plugins may change the length.
        SizeHint::default()
    }
}
