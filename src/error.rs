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
