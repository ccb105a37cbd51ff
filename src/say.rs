//! Command output for a person: `say!` writes a line to stdout and stops the process
//! quietly when the reader went away, as `| head` does.

/// `println!` for command output: when the reader went away (`| head`), stop quietly
/// instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}
pub(crate) use say;
