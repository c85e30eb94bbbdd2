//! Image names: `[REGISTRY/]REPOSITORY[:TAG]`, as podman spells them.
//!
//! A name is stored as a symlink at `images/refs/<name>`, so the grammar
//! must make every name a safe relative path: components start with a letter
//! or digit (no `.`, `..` or empty components) and use only
//! `[a-z0-9._-]` (upper case is allowed in the registry part), and the tag is
//! `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. A name without a tag gets `:latest`.

use std::fmt;

use super::{Result, StoreError};

/// A validated image name, always with a tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageName(String);

impl ImageName {
    /// Parses and validates a name, adding `:latest` when there is no tag.
    pub fn parse(s: &str) -> Result<ImageName> {
        let bad = |why| Err(StoreError::BadName(s.to_string(), why));
        if s.is_empty() || s.len() > 255 {
            return bad("it must be 1 to 255 characters long");
        }
        let (repo, tag) = match s.rfind(':') {
            Some(i) if !s[i..].contains('/') => (&s[..i], Some(&s[i + 1..])),
            _ => (s, None),
        };
        if repo.is_empty() {
            return bad("the repository part is empty");
        }
        for (n, comp) in repo.split('/').enumerate() {
            let Some(first) = comp.bytes().next() else {
                return bad("it has an empty path component");
            };
            if !first.is_ascii_alphanumeric() {
                return bad("each path component must start with a letter or digit");
            }
            let ok = comp.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'-')
                    || (n == 0 && repo.contains('/') && b.is_ascii_uppercase())
            });
            // A registry may carry a port: `host:5000/...`.
            let ok = ok
                || (n == 0
                    && repo.contains('/')
                    && comp.split_once(':').is_some_and(|(h, p)| {
                        !h.is_empty()
                            && h.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
                            && !p.is_empty()
                            && p.bytes().all(|b| b.is_ascii_digit())
                    }));
            if !ok {
                return bad("only lowercase letters, digits, '.', '_' and '-' may be used");
            }
        }
        let tag = match tag {
            None => "latest",
            Some(t) => {
                let mut b = t.bytes();
                let first_ok = b
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
                if !first_ok
                    || t.len() > 128
                    || !b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
                {
                    return bad(
                        "the tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                    );
                }
                t
            }
        };
        Ok(ImageName(format!("{repo}:{tag}")))
    }

    /// The full name, with its tag.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The repository part (before the tag).
    pub fn repository(&self) -> &str {
        self.0.rsplit_once(':').map_or(&self.0, |(r, _)| r)
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        self.0.rsplit_once(':').map_or("latest", |(_, t)| t)
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_a_tag() {
        assert_eq!(
            ImageName::parse("busybox").unwrap().as_str(),
            "busybox:latest"
        );
        assert_eq!(ImageName::parse("a/b:1.0").unwrap().as_str(), "a/b:1.0");
        assert_eq!(
            ImageName::parse("localhost:5000/x").unwrap().as_str(),
            "localhost:5000/x:latest"
        );
        let n = ImageName::parse("quay.io/a/b:v2").unwrap();
        assert_eq!((n.repository(), n.tag()), ("quay.io/a/b", "v2"));
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            "", "..", "../x", "a/../b", "/abs", "a//b", ".hidden", "a/.b", "A", "x:", "x:-t",
            "a b", "x:t/y",
        ] {
            assert!(ImageName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
