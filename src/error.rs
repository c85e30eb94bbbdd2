//! The error convention shared by every module.
//!
//! Each module has its own error enum. Each variant maps to a stable code
//! (`FKnnnn`, listed in `docs/errors.md`) and a one-line hint telling the user
//! what to do. Codes are never reused or renumbered.

/// An error that carries a stable code and a hint for the user.
pub trait Coded: std::error::Error {
    /// The stable code, such as `FK0210`.
    fn code(&self) -> &'static str;
    /// One line telling the user what to do about it.
    fn hint(&self) -> String;
}

/// Renders an [`std::io::Error`] with the path it concerns.
pub fn io_at(path: &std::path::Path, err: &std::io::Error) -> String {
    format!("{}: {err}", path.display())
}

/// What a background server that died said last, from its log (`text`):
/// its last coded error line (`error[FKnnnn]: …`, as the CLI prints it),
/// else its last line that is not empty and not a `# ` header. Both
/// servers (FUSE, volumes) are reported to the command that started them
/// this way.
pub fn last_words(text: &str) -> Option<&str> {
    let mut lines = text
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("# "));
    lines
        .clone()
        .find(|l| l.starts_with("error["))
        .or_else(|| lines.next())
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_words_prefers_the_last_coded_error() {
        let log = "# header\nWARN a\nerror[FK0700]: full\n  hint: free space\n\n";
        assert_eq!(super::last_words(log), Some("error[FK0700]: full"));
        assert_eq!(super::last_words("# header\nWARN a\n"), Some("WARN a"));
        assert_eq!(super::last_words("# header\n\n"), None);
    }
}
