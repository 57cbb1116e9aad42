//! Async frame reader and writer for tokio streams.
//!
//! The reader checks the declared length against `max_frame` before reading or allocating
//! anything for the body, and then grows its buffer only as bytes actually arrive (doubling
//! from 64 KiB), so a peer that announces a large frame and sends nothing costs at most
//! 64 KiB, and no buffer ever exceeds the accepted length.
//!
//! [`read_len`], [`check_len`] and [`read_body`] are the three steps of [`read_frame`],
//! for a caller that puts its own deadlines and memory budget between them (the listener).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::WireError;
use super::frame::{Frame, LEN_SIZE};

/// First buffer size for a frame body; larger bodies grow by doubling as data arrives.
const INITIAL_CHUNK: usize = 64 * 1024;

/// Reads one frame. `Ok(None)` means the stream ended cleanly between frames.
///
/// Errors: [`WireError::Oversize`] when the declared length exceeds `max_frame` (nothing of
/// the body has been read: the caller should close the connection), [`WireError::Truncated`]
/// when the stream ends inside a frame, [`WireError::Io`] otherwise.
pub async fn read_frame<R>(reader: &mut R, max_frame: u32) -> Result<Option<Frame>, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let Some(len) = read_len(reader).await? else {
        return Ok(None);
    };
    check_len(len, max_frame)?;
    read_body(reader, len, |_| Ok(())).await.map(Some)
}

/// Reads the 4-byte length of the next frame. `Ok(None)` means the stream ended cleanly
/// before it; [`WireError::Truncated`] that it ended inside it.
pub async fn read_len<R>(reader: &mut R) -> Result<Option<u32>, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut len_buf = [0u8; LEN_SIZE];
    let mut got = 0;
    while got < LEN_SIZE {
        let n = reader.read(&mut len_buf[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(WireError::Truncated {
                expected: LEN_SIZE,
                got,
            });
        }
        got += n;
    }
    Ok(Some(u32::from_be_bytes(len_buf)))
}

/// [`WireError::Oversize`] when `len` exceeds `max_frame`.
pub fn check_len(len: u32, max_frame: u32) -> Result<(), WireError> {
    if len > max_frame {
        return Err(WireError::Oversize {
            len: len as u64,
            max: max_frame,
        });
    }
    Ok(())
}

/// Reads a frame body of `len` bytes (its length already read and checked), growing the
/// buffer only as bytes arrive. Before each growth, `grow(extra)` may refuse the `extra`
/// bytes (a memory budget): its error ends the read as [`WireError::Io`].
pub async fn read_body<R>(
    reader: &mut R,
    len: u32,
    mut grow: impl FnMut(usize) -> std::io::Result<()>,
) -> Result<Frame, WireError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let len = len as usize;
    let mut body: Vec<u8> = Vec::new();
    let mut filled = 0;
    while filled < len {
        let target = len.min(INITIAL_CHUNK.max(filled.saturating_mul(2)));
        grow(target - body.len())?;
        body.reserve_exact(target - body.len());
        body.resize(target, 0);
        while filled < target {
            let n = reader.read(&mut body[filled..target]).await?;
            if n == 0 {
                return Err(WireError::Truncated {
                    expected: len,
                    got: filled,
                });
            }
            filled += n;
        }
    }
    Ok(Frame::from_body(body))
}

/// Writes one complete frame (a hello, or records from [`super::Sealer::seal`]) and flushes.
pub async fn write_frame<W>(writer: &mut W, frame: &[u8]) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    writer.write_all(frame).await?;
    writer.flush().await?;
    Ok(())
}

/// The empty packet (length 0), which asks the receiving node to dequeue its actions.
pub const EMPTY_PACKET: [u8; LEN_SIZE] = [0; LEN_SIZE];

/// Writes the empty packet and flushes.
pub async fn write_empty<W>(writer: &mut W) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    write_frame(writer, &EMPTY_PACKET).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    #[tokio::test]
    async fn reads_frames_and_clean_eof() {
        let mut data = Vec::new();
        data.extend_from_slice(&[0, 0, 0, 3, 1, 2, 3]);
        data.extend_from_slice(&EMPTY_PACKET);
        let mut r = &data[..];
        let f = read_frame(&mut r, 100).await.unwrap().unwrap();
        assert_eq!(f.body(), &[1, 2, 3]);
        assert!(read_frame(&mut r, 100).await.unwrap().unwrap().is_empty());
        assert!(read_frame(&mut r, 100).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncation_is_reported() {
        let mut r = &[0u8, 0][..];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(WireError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        let mut r = &[0u8, 0, 0, 5, 1, 2][..];
        assert!(matches!(
            read_frame(&mut r, 100).await,
            Err(WireError::Truncated {
                expected: 5,
                got: 2
            })
        ));
    }

    /// A reader that yields the length prefix and then counts how much was asked of it.
    struct Counting {
        prefix: Vec<u8>,
        pos: usize,
        body_reads: usize,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.pos < self.prefix.len() {
                let n = buf.remaining().min(self.prefix.len() - self.pos);
                let p = self.pos;
                buf.put_slice(&self.prefix[p..p + n]);
                self.pos += n;
            } else {
                self.body_reads += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn oversize_is_refused_before_reading_the_body() {
        let mut r = Counting {
            prefix: 1_000_000u32.to_be_bytes().to_vec(),
            pos: 0,
            body_reads: 0,
        };
        let e = read_frame(&mut r, 999_999).await.unwrap_err();
        assert!(matches!(
            e,
            WireError::Oversize {
                len: 1_000_000,
                max: 999_999
            }
        ));
        assert_eq!(r.body_reads, 0);
    }

    #[tokio::test]
    async fn buffer_grows_with_data_not_with_the_claim() {
        // Claims 10 MB, sends 100 KB then EOF: buffer stays far below the claim.
        let claim = 10_000_000u32;
        let mut data = claim.to_be_bytes().to_vec();
        data.extend(std::iter::repeat_n(0u8, 100_000));
        let mut r = &data[..];
        let e = read_frame(&mut r, u32::MAX).await.unwrap_err();
        assert!(matches!(
            e,
            WireError::Truncated {
                expected: 10_000_000,
                got: 100_000
            }
        ));

        // Exact-size allocation for an accepted large frame.
        let len = 300_001usize;
        let mut data = (len as u32).to_be_bytes().to_vec();
        data.extend(std::iter::repeat_n(7u8, len));
        let mut r = &data[..];
        let f = read_frame(&mut r, u32::MAX).await.unwrap().unwrap();
        assert_eq!(f.body().len(), len);
        assert!(f.into_body().capacity() <= len);
    }

    #[tokio::test]
    async fn writer_round_trips() {
        let mut out = Vec::new();
        write_frame(&mut out, &[0, 0, 0, 1, 42]).await.unwrap();
        write_empty(&mut out).await.unwrap();
        let mut r = &out[..];
        assert_eq!(read_frame(&mut r, 10).await.unwrap().unwrap().body(), &[42]);
        assert!(read_frame(&mut r, 10).await.unwrap().unwrap().is_empty());
    }
}
