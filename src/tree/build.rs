//! Building a tree from layer entries, bottom layer first.
//!
//! The rules are those of the OCI image spec's layer changesets, applied in
//! tar order within a layer:
//! - an entry replaces what was at its path; a directory over a directory
//!   only replaces the directory's metadata and keeps its children;
//! - `.wh.NAME` deletes `NAME` as the layers below left it;
//! - `.wh..wh..opq` empties its directory of what the layers below put there;
//! - a hardlink shares the inode of its target, which may come from a lower
//!   layer.
//!
//! What is refused (and why it matters): a path with `..` or an absolute path
//! (it would name something outside the image), a path through a symlink or
//! a file (an extractor following it would write outside the tree), a
//! hardlink whose target is missing or outside, a relative symlink climbing
//! above the root, the same path twice in one layer (which of the two is the
//! image is then a matter of tool behaviour).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use composefs::generic_tree::{LeafContent, Stat};
use composefs::tree::{Directory, Inode, RegularFile};

use super::{TreeError, show};
use crate::store::{ObjectId, Tree};

/// What a layer entry is.
#[derive(Debug, Clone)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file.
    File(RegularFile<ObjectId>),
    /// A symlink with its target.
    Symlink(Box<OsStr>),
    /// A hardlink to another path (normalized, relative).
    HardLink(Vec<u8>),
    /// A character device.
    CharDevice(u64),
    /// A block device.
    BlockDevice(u64),
    /// A fifo.
    Fifo,
    /// A socket.
    Socket,
}

/// One entry of a layer, with a normalized path (relative, no `.` or empty
/// components, `""` for the root).
#[derive(Debug, Clone)]
pub struct Entry {
    /// The normalized path.
    pub path: Vec<u8>,
    /// Metadata (permission bits only in `st_mode`).
    pub stat: Stat,
    /// The kind and content.
    pub kind: EntryKind,
}

/// Builds a tree layer by layer.
#[derive(Debug)]
pub struct TreeBuilder {
    tree: Tree,
    /// Paths written by the current layer.
    this_layer: HashSet<Vec<u8>>,
}

impl Default for TreeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The metadata of a directory that no entry described.
pub fn implicit_dir_stat() -> Stat {
    Stat {
        st_mode: 0o755,
        st_uid: 0,
        st_gid: 0,
        st_mtim_sec: 0,
        st_mtim_nsec: 0,
        xattrs: Default::default(),
    }
}

impl TreeBuilder {
    /// An empty tree with a root directory `0755 root:root`.
    pub fn new() -> Self {
        TreeBuilder {
            tree: Tree::new(implicit_dir_stat()),
            this_layer: HashSet::new(),
        }
    }

    /// Starts the next layer.
    pub fn begin_layer(&mut self) {
        self.this_layer.clear();
    }

    /// Normalizes a path from a layer: strips `./` and leading `/`-free
    /// components, refuses absolute paths and `..`.
    pub fn normalize(raw: &[u8]) -> Result<Vec<u8>, TreeError> {
        if raw.first() == Some(&b'/') {
            return Err(TreeError::UnsafePath(show(raw)));
        }
        let mut out: Vec<u8> = Vec::with_capacity(raw.len());
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => return Err(TreeError::UnsafePath(show(raw))),
                c => {
                    if c.contains(&0) {
                        return Err(TreeError::UnsafePath(show(raw)));
                    }
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(c);
                }
            }
        }
        Ok(out)
    }

    /// Applies one entry.
    pub fn apply(&mut self, entry: Entry) -> Result<(), TreeError> {
        let Entry { path, stat, kind } = entry;
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&path[..0], &path[..]),
        };

        // Whiteouts first: they delete and never create.
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            let this_layer = &self.this_layer;
            let Some(dir) = existing_dir_mut(&mut self.tree.root, parent) else {
                return Ok(());
            };
            if hidden == b".wh..opq" {
                let doomed: Vec<Box<OsStr>> = dir
                    .entries()
                    .filter(|(n, _)| !this_layer.contains(&join(parent, n.as_bytes())))
                    .map(|(n, _)| Box::from(n))
                    .collect();
                for n in doomed {
                    dir.remove(&n);
                }
            } else if !hidden.is_empty() && !this_layer.contains(&join(parent, hidden)) {
                dir.remove(OsStr::from_bytes(hidden));
            }
            return Ok(());
        }

        if !self.this_layer.insert(path.clone()) {
            return Err(TreeError::Duplicate(show(&path)));
        }

        if path.is_empty() {
            return match kind {
                EntryKind::Directory => {
                    self.tree.set_root_stat(stat);
                    Ok(())
                }
                _ => Err(TreeError::UnsafePath(show(&path))),
            };
        }

        let inode = match kind {
            EntryKind::Directory => Inode::Directory(Box::new(Directory::new(stat))),
            EntryKind::HardLink(target) => {
                let id = self
                    .find_leaf(&target)
                    .ok_or_else(|| TreeError::MissingLinkTarget(show(&path), show(&target)))?;
                Inode::leaf(id)
            }
            EntryKind::Symlink(target) => {
                check_symlink(parent, target.as_bytes())
                    .map_err(|()| TreeError::LinkEscapes(show(&path), show(target.as_bytes())))?;
                self.leaf(stat, LeafContent::Symlink(target))
            }
            EntryKind::File(f) => self.leaf(stat, LeafContent::Regular(f)),
            EntryKind::CharDevice(d) => self.leaf(stat, LeafContent::CharacterDevice(d)),
            EntryKind::BlockDevice(d) => self.leaf(stat, LeafContent::BlockDevice(d)),
            EntryKind::Fifo => self.leaf(stat, LeafContent::Fifo),
            EntryKind::Socket => self.leaf(stat, LeafContent::Socket),
        };
        let dir = self.dir_for(parent, &path)?;
        dir.merge(OsStr::from_bytes(name), inode);
        Ok(())
    }

    /// Finishes: drops leaves no path reaches any more.
    pub fn finish(mut self) -> Tree {
        self.tree.compact();
        self.tree
    }

    fn leaf(&mut self, stat: Stat, content: LeafContent<RegularFile<ObjectId>>) -> Inode<ObjectId> {
        Inode::leaf(self.tree.push_leaf(stat, content))
    }

    /// The directory at `parent`, creating missing directories on the way.
    fn dir_for(
        &mut self,
        parent: &[u8],
        path: &[u8],
    ) -> Result<&mut Directory<ObjectId>, TreeError> {
        let mut dir = &mut self.tree.root;
        let mut walked = 0usize;
        for comp in parent.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            walked += comp.len() + 1;
            let name = OsStr::from_bytes(comp);
            if dir.lookup(name).is_none() {
                dir.insert(
                    name,
                    Inode::Directory(Box::new(Directory::new(implicit_dir_stat()))),
                );
            }
            dir = match dir.get_directory_mut(name) {
                Ok(d) => d,
                Err(_) => {
                    let through = &parent[..walked.saturating_sub(1).min(parent.len())];
                    return Err(TreeError::ThroughNonDirectory(show(path), show(through)));
                }
            };
        }
        Ok(dir)
    }

    fn find_leaf(&self, target: &[u8]) -> Option<composefs::generic_tree::LeafId> {
        match super::lookup(&self.tree, target)? {
            Inode::Leaf(id, _) => Some(*id),
            Inode::Directory(_) => None,
        }
    }
}

fn existing_dir_mut<'d>(
    root: &'d mut Directory<ObjectId>,
    parent: &[u8],
) -> Option<&'d mut Directory<ObjectId>> {
    let mut dir = root;
    for comp in parent.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        dir = dir.get_directory_mut(OsStr::from_bytes(comp)).ok()?;
    }
    Some(dir)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = parent.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// A relative symlink may not climb above the root from where it stands.
/// Absolute targets are resolved against the image root by whoever follows
/// them (the container), so they cannot leave the tree.
fn check_symlink(parent: &[u8], target: &[u8]) -> Result<(), ()> {
    if target.first() == Some(&b'/') || target.is_empty() {
        return Ok(());
    }
    let mut depth = parent
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .count();
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => depth = depth.checked_sub(1).ok_or(())?,
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            stat: implicit_dir_stat(),
            kind: EntryKind::File(RegularFile::Inline(Box::from(&b"x"[..]))),
        }
    }

    fn names(tree: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        composefs::dumpfile::write_dumpfile(&mut out, tree).unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn normalize_refuses_escapes() {
        assert_eq!(TreeBuilder::normalize(b"./a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(TreeBuilder::normalize(b"./").unwrap(), b"");
        assert!(TreeBuilder::normalize(b"/etc/passwd").is_err());
        assert!(TreeBuilder::normalize(b"a/../../b").is_err());
        assert!(TreeBuilder::normalize(b"..").is_err());
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let mut b = TreeBuilder::new();
        b.apply(file("d/a")).unwrap();
        b.apply(file("d/b")).unwrap();
        b.apply(file("e")).unwrap();
        b.begin_layer();
        b.apply(file("d/c")).unwrap();
        b.apply(file("d/.wh..wh..opq")).unwrap();
        b.apply(file(".wh.e")).unwrap();
        assert_eq!(names(&b.finish()), ["/", "/d", "/d/c"]);
    }

    #[test]
    fn hardlinks_across_layers_share_an_inode() {
        let mut b = TreeBuilder::new();
        b.apply(file("a")).unwrap();
        b.begin_layer();
        b.apply(Entry {
            kind: EntryKind::HardLink(b"a".to_vec()),
            ..file("b")
        })
        .unwrap();
        let t = b.finish();
        assert_eq!(t.leaves.len(), 1);
        assert_eq!(t.nlinks(), vec![2]);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let mut b = TreeBuilder::new();
        b.apply(Entry {
            kind: EntryKind::Symlink(Box::from(OsStr::new("/etc"))),
            ..file("link")
        })
        .unwrap();
        assert!(matches!(
            b.apply(file("link/passwd")),
            Err(TreeError::ThroughNonDirectory(..))
        ));
        assert!(matches!(
            b.apply(file("link")),
            Err(TreeError::Duplicate(_))
        ));
        let escape = Entry {
            kind: EntryKind::Symlink(Box::from(OsStr::new("../../x"))),
            ..file("a/l")
        };
        assert!(matches!(b.apply(escape), Err(TreeError::LinkEscapes(..))));
        let missing = Entry {
            kind: EntryKind::HardLink(b"nope".to_vec()),
            ..file("h")
        };
        assert!(matches!(
            b.apply(missing),
            Err(TreeError::MissingLinkTarget(..))
        ));
    }
}
