//! Results on stdout that end quietly when the reader goes away.
//!
//! `kestrel ... | head -n 1` closes the pipe after one line. `println!` panics on the resulting `EPIPE` (Rust ignores
//! `SIGPIPE`, so the write fails instead of killing the process). Killing the process would be worse: a command
//! that is still writing model files or heatmaps must finish them. So every result line goes through [`line`] (or
//! the [`outln!`](crate::outln) macro): on a broken pipe it stops printing, lets the command finish its work, and the
//! command exits 0 as if the reader had read everything. Other write errors (a full disk behind a redirect) are
//! returned, since output was lost that the user asked for.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static READER_GONE: AtomicBool = AtomicBool::new(false);

/// Print one line to stdout. After the reader has gone (broken pipe) this prints nothing and returns `Ok`.
pub fn line(args: fmt::Arguments<'_>) -> io::Result<()> {
    write_line(&mut io::stdout().lock(), args)
}

/// Whether stdout's reader has gone (a broken pipe was met): later lines are dropped.
pub fn reader_gone() -> bool {
    READER_GONE.load(Ordering::Relaxed)
}

fn write_line(out: &mut impl Write, args: fmt::Arguments<'_>) -> io::Result<()> {
    if reader_gone() {
        return Ok(());
    }
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            READER_GONE.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other,
    }
}

/// `println!` for results: `outln!("{x}")?` prints a line with [`line`] and returns its `io::Result`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A writer that fails another way.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("no space left"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_pipe_stops_printing_quietly_other_errors_are_returned() {
        // Other errors first: once the (process-wide) flag is set, every line is dropped.
        assert!(write_line(&mut Full, format_args!("x")).is_err());
        let mut v = Vec::new();
        write_line(&mut v, format_args!("a {}", 1)).unwrap();
        assert_eq!(v, b"a 1\n");
        assert!(!reader_gone());
        write_line(&mut Closed, format_args!("b")).unwrap();
        assert!(reader_gone());
        write_line(&mut v, format_args!("c")).unwrap();
        assert_eq!(v, b"a 1\n", "nothing more after the reader went away");
    }
}
