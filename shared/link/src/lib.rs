//! kestrel-link: kestrel-wire frames over async byte streams, the one place where host (`kestrel monitor`, the HIL
//! harness) and edge (the unit's TCP and serial sessions) read and write envelopes.
//!
//! Why a crate of its own: kestrel-wire stays free of IO and async runtimes (it builds `no_std + alloc`), while the
//! read loop (read whatever the transport delivers, push it through [`FrameDecoder`], hand out envelopes) and the
//! write path (encode, write, flush) are the same on both sides and were written twice. This crate holds them once,
//! on tokio's `AsyncRead`/`AsyncWrite`, so TCP, tokio-serial ports and in-memory `tokio::io::duplex` pipes all run
//! the same code.
//!
//! The reader and writer keep their state apart from the stream ([`FrameReader::recv`] and [`FrameWriter::send`]
//! take the stream as an argument): a session that reads and writes concurrently can split its stream into halves,
//! and one that does not can use [`FramedLink`], which owns the stream. Corrupt frames are dropped and counted by
//! the wire crate's decoder, which resynchronises at the next `0x00`, so line noise costs a frame, never the link.

use std::collections::VecDeque;
use std::io;

use kestrel_wire::{encode_frame, Envelope, FrameCounts, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes asked of the transport per read.
const READ_CHUNK: usize = 16 * 1024;

/// Reads envelopes from a byte stream: the decoder state and the envelopes decoded but not yet handed out.
#[derive(Debug)]
pub struct FrameReader {
    decoder: FrameDecoder,
    ready: VecDeque<Envelope>,
    buf: Vec<u8>,
    bytes: u64,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader with an empty decoder.
    pub fn new() -> Self {
        FrameReader {
            decoder: FrameDecoder::new(),
            ready: VecDeque::new(),
            buf: vec![0; READ_CHUNK],
            bytes: 0,
        }
    }

    /// Next envelope from `io`; `Ok(None)` when the peer closed the stream. Corrupt frames are skipped (counted in
    /// [`FrameReader::counts`]).
    ///
    /// Cancel-safe: bytes already read stay in the decoder and decoded envelopes in the reader, so this can sit in
    /// a `select!`.
    pub async fn recv<R>(&mut self, io: &mut R) -> io::Result<Option<Envelope>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        loop {
            if let Some(env) = self.ready.pop_front() {
                return Ok(Some(env));
            }
            let n = io.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(None);
            }
            self.bytes += n as u64;
            let ready = &mut self.ready;
            self.decoder.push_with(&self.buf[..n], |frame| {
                // Errors are counted by the decoder; the frame is simply lost.
                if let Ok(env) = frame {
                    ready.push_back(env);
                }
            });
        }
    }

    /// Decoder counters (good frames, errors by kind).
    pub fn counts(&self) -> FrameCounts {
        *self.decoder.counts()
    }

    /// Bytes read from the stream so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Writes envelopes to a byte stream, one frame per write, flushed.
#[derive(Debug, Default)]
pub struct FrameWriter {
    buf: Vec<u8>,
    bytes: u64,
}

impl FrameWriter {
    /// A writer with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frame `env`, write it and flush. An envelope too large for a frame is `InvalidInput` (its
    /// [`kestrel_wire::EncodeError`] is the error's inner error) and nothing is written.
    pub async fn send<W>(&mut self, io: &mut W, env: &Envelope) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        self.buf.clear();
        encode_frame(env, &mut self.buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        io.write_all(&self.buf).await?;
        io.flush().await?;
        self.bytes += self.buf.len() as u64;
        Ok(())
    }

    /// Write a lone `0x00` and flush: the peer's decoder drops any half-received frame (after a reconnect on a
    /// serial line, the other end may still hold the start of a frame from before the break).
    pub async fn flush_peer<W>(&mut self, io: &mut W) -> io::Result<()>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        io.write_all(&[0]).await?;
        io.flush().await?;
        self.bytes += 1;
        Ok(())
    }

    /// Bytes written to the stream so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Any bidirectional byte stream a link can run over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A framed link that owns its stream: send and receive whole envelopes, one at a time.
pub struct FramedLink {
    io: Box<dyn Transport>,
    reader: FrameReader,
    writer: FrameWriter,
}

impl std::fmt::Debug for FramedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedLink")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl FramedLink {
    /// Wrap a byte stream.
    pub fn new(io: impl Transport + 'static) -> Self {
        FramedLink {
            io: Box::new(io),
            reader: FrameReader::new(),
            writer: FrameWriter::new(),
        }
    }

    /// Send one envelope (framed) and flush it.
    pub async fn send(&mut self, env: &Envelope) -> io::Result<()> {
        self.writer.send(&mut self.io, env).await
    }

    /// Send a lone `0x00` ([`FrameWriter::flush_peer`]).
    pub async fn flush_peer(&mut self) -> io::Result<()> {
        self.writer.flush_peer(&mut self.io).await
    }

    /// Next envelope. Corrupt frames are skipped (and counted); end of stream is `UnexpectedEof`.
    ///
    /// Cancel-safe, like [`FrameReader::recv`].
    pub async fn recv(&mut self) -> io::Result<Envelope> {
        self.reader.recv(&mut self.io).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection",
            )
        })
    }

    /// Decoder counters (good frames, errors by kind).
    pub fn counts(&self) -> FrameCounts {
        self.reader.counts()
    }

    /// Bytes received and sent on this link so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.reader.bytes(), self.writer.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel_wire::{BundleChunk, Msg, MAX_FRAME_LEN};

    #[tokio::test]
    async fn envelopes_cross_a_duplex_and_garbage_is_skipped() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut link = FramedLink::new(a);
        // Garbage, then a real frame: the decoder resyncs at the 0x00 and counts one error.
        let mut bytes = vec![0x13, 0x37, 0x00];
        encode_frame(&Envelope::new(7, Msg::Status), &mut bytes).unwrap();
        b.write_all(&bytes).await.unwrap();
        let env = link.recv().await.unwrap();
        assert_eq!(env, Envelope::new(7, Msg::Status));
        assert_eq!(link.counts().errors(), 1);
        assert_eq!(link.bytes().0, bytes.len() as u64);
        drop(b);
        let e = link.recv().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn reader_and_writer_work_on_split_halves() {
        let (a, b) = tokio::io::duplex(64);
        let (_a_rd, mut a_wr) = tokio::io::split(a);
        let (mut b_rd, _b_wr) = tokio::io::split(b);
        let (mut w, mut r) = (FrameWriter::new(), FrameReader::new());
        // Several frames through a pipe smaller than one of them: the reader assembles them across reads.
        let sent: Vec<Envelope> = (0..3)
            .map(|i| {
                Envelope::new(
                    i,
                    Msg::BundleChunk(BundleChunk {
                        offset: u64::from(i),
                        bytes: vec![i as u8; 200],
                    }),
                )
            })
            .collect();
        let to_send = sent.clone();
        let writer = tokio::spawn(async move {
            w.flush_peer(&mut a_wr).await.unwrap();
            for e in &to_send {
                w.send(&mut a_wr, e).await.unwrap();
            }
            w.bytes()
        });
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(r.recv(&mut b_rd).await.unwrap().unwrap());
        }
        assert_eq!(got, sent);
        assert_eq!(writer.await.unwrap(), r.bytes());
        assert_eq!(
            r.counts().empty,
            1,
            "the flush is an empty frame, not an error"
        );
        assert_eq!(r.counts().errors(), 0);
    }

    #[tokio::test]
    async fn an_envelope_too_large_for_a_frame_is_invalid_input_and_nothing_is_written() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = FrameWriter::new();
        let big = Envelope::new(
            0,
            Msg::BundleChunk(BundleChunk {
                offset: 0,
                bytes: vec![1; MAX_FRAME_LEN],
            }),
        );
        let e = w.send(&mut a, &big).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(w.bytes(), 0);
        drop(a);
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn end_of_stream_is_none_for_the_reader() {
        let (a, mut b) = tokio::io::duplex(64);
        drop(a);
        assert!(FrameReader::new().recv(&mut b).await.unwrap().is_none());
    }
}
