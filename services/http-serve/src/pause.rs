//! A body that may pause at most so long between two of its pieces: a request body whose client
//! stopped sending, or an upstream's answer that stalls, ends in [`Paused`] instead of holding its
//! reader for ever.
//!
//! The timer is armed only while the body keeps its reader waiting, and disarmed by the next
//! piece: a body that arrived whole with its head (most of them) is read without one. tower-http's
//! `TimeoutBody`, used before, armed a timer before every read; for a POST whose body came with
//! its head, that timer was a twentieth of the gateway's instructions (callgrind).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use hyper::body::{Body, Frame, SizeHint};

pin_project_lite::pin_project! {
    /// `body`, cut off with [`Paused`] once no piece of it has come for the timeout.
    #[derive(Debug)]
    pub struct PauseTimeout<B> {
        #[pin]
        body: B,
        timeout: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

/// No piece of a body came for the given time.
#[derive(Debug, thiserror::Error)]
#[error("no part of the body came for {0:?}")]
pub struct Paused(pub Duration);

impl<B> PauseTimeout<B> {
    pub fn new(body: B, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for PauseTimeout<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.sleep = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = *this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Paused(timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    /// A body of two pieces, `pause` apart.
    fn two_pieces(
        pause: Duration,
    ) -> impl Body<Data = axum::body::Bytes, Error = std::convert::Infallible> {
        let pieces = futures_util::stream::unfold(0, move |sent| async move {
            match sent {
                0 => Some((Ok(Frame::data(axum::body::Bytes::from_static(b"a"))), 1)),
                1 => {
                    tokio::time::sleep(pause).await;
                    Some((Ok(Frame::data(axum::body::Bytes::from_static(b"b"))), 2))
                }
                _ => None,
            }
        });
        StreamBody::new(pieces)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_timeout_ends_the_body_and_a_shorter_one_does_not() {
        let body = PauseTimeout::new(two_pieces(Duration::from_secs(2)), Duration::from_secs(3));
        let read = body
            .collect()
            .await
            .expect("paused for less than the timeout");
        assert_eq!(&read.to_bytes()[..], b"ab");

        let body = PauseTimeout::new(two_pieces(Duration::from_secs(4)), Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let err = body
            .collect()
            .await
            .expect_err("paused for longer than the timeout");
        assert!(err.is::<Paused>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
