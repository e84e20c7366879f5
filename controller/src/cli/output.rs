//! Standard output for the commands. A reader that stops early (`palisade crd | head -1`)
//! closes the pipe: the command then ends quietly, as Unix tools do, instead of panicking.

use std::io::{ErrorKind, Write};

/// Writes `text` to standard output. A closed pipe is not an error.
pub fn emit(text: &str) -> Result<(), String> {
    emit_to(&mut std::io::stdout().lock(), text)
}

fn emit_to(out: &mut impl Write, text: &str) -> Result<(), String> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| format!("cannot write to standard output: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(ErrorKind::BrokenPipe, "closed"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(ErrorKind::StorageFull, "full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_quietly_and_other_failures_are_reported() {
        assert_eq!(emit_to(&mut Closed, "x"), Ok(()));
        assert!(emit_to(&mut Full, "x").is_err());
        let mut buf = Vec::new();
        emit_to(&mut buf, "abc").unwrap();
        assert_eq!(buf, b"abc");
    }
}
