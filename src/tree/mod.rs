//! Image trees: the `composefs` tree model with store objects as file data.
//!
//! This module owns what happens to a tree between the layers and the store:
//! [`TreeBuilder`] applies layer entries in order (whiteouts, opaque
//! directories, hardlinks across layers) and refuses entries that would
//! reach outside the tree; [`stats`] computes the figures of a finished tree;
//! [`restore`] copies part of a tree out of the store with its metadata.
//!
//! Invariant: a tree that [`TreeBuilder::finish`] returns has no orphaned
//! leaves and no path through a non-directory, so `composefs`'s EROFS writer
//! accepts it.

mod build;
mod restore;

pub use build::{Entry, EntryKind, TreeBuilder};
pub use restore::restore;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use composefs::fsverity::FsVerityHashValue;
use composefs::generic_tree::LeafContent;
use composefs::tree::{Directory, Inode, RegularFile};

use crate::error::Coded;
use crate::store::{ImageStats, ObjectId, Tree};

/// What can go wrong with a tree.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A path leaves the root (`..`) or is absolute.
    #[error("entry {0:?}: path is absolute or leaves the image root")]
    UnsafePath(String),
    /// A link points outside the tree.
    #[error("entry {0:?}: link target {1:?} leads outside the image tree")]
    LinkEscapes(String, String),
    /// A path goes through a symlink or file.
    #[error("entry {0:?}: path goes through {1:?}, which is not a directory")]
    ThroughNonDirectory(String, String),
    /// The same path twice in a layer.
    #[error("entry {0:?} appears twice in one layer")]
    Duplicate(String),
    /// A hardlink to nothing.
    #[error("entry {0:?}: hardlink target {1:?} does not exist (or is a directory)")]
    MissingLinkTarget(String, String),
    /// A path not in the image.
    #[error("{0:?} does not exist in the image")]
    NotInImage(String),
    /// Restore destination problem.
    #[error("cannot restore to {0}: {1}")]
    Destination(String, String),
    /// Restore write failure.
    #[error("restoring {0}: {1}")]
    Write(String, std::io::Error),
    /// The store failed while reading objects.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Coded for TreeError {
    fn code(&self) -> &'static str {
        match self {
            TreeError::UnsafePath(_) => "FK0210",
            TreeError::LinkEscapes(..) => "FK0211",
            TreeError::ThroughNonDirectory(..) => "FK0212",
            TreeError::Duplicate(_) => "FK0213",
            TreeError::MissingLinkTarget(..) => "FK0214",
            TreeError::NotInImage(_) => "FK0400",
            TreeError::Destination(..) => "FK0401",
            TreeError::Write(..) => "FK0402",
            TreeError::Store(e) => e.code(),
        }
    }

    fn hint(&self) -> String {
        match self {
            TreeError::UnsafePath(_)
            | TreeError::LinkEscapes(..)
            | TreeError::ThroughNonDirectory(..)
            | TreeError::Duplicate(_)
            | TreeError::MissingLinkTarget(..) => {
                "the image is hostile or broken; rebuild it with a trusted tool (nothing was stored)".into()
            }
            TreeError::NotInImage(_) => "list the image's paths with `fukastor dump IMAGE`".into(),
            TreeError::Destination(..) => "name a destination that does not exist yet, in an existing directory".into(),
            TreeError::Write(..) => "check free space and permissions at the destination".into(),
            TreeError::Store(e) => e.hint(),
        }
    }
}

/// Renders a raw path for messages.
pub(crate) fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Finds the inode at a normalized relative path (`""` is the root).
pub fn lookup<'t>(tree: &'t Tree, path: &[u8]) -> Option<&'t Inode<ObjectId>> {
    let mut dir: &Directory<ObjectId> = &tree.root;
    let mut comps = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .peekable();
    while let Some(c) = comps.next() {
        let inode = dir.lookup(OsStr::from_bytes(c))?;
        if comps.peek().is_none() {
            return Some(inode);
        }
        match inode {
            Inode::Directory(d) => dir = d,
            Inode::Leaf(..) => return None,
        }
    }
    None
}

/// Counts what is in a tree.
pub fn stats(tree: &Tree) -> ImageStats {
    let mut s = ImageStats::default();
    let nlinks = tree.nlinks();
    let mut objects: HashSet<&ObjectId> = HashSet::new();
    let mut stack: Vec<&Directory<ObjectId>> = vec![&tree.root];
    s.paths = 1;
    s.directories = 1;
    while let Some(dir) = stack.pop() {
        for (_, inode) in dir.entries() {
            s.paths += 1;
            match inode {
                Inode::Directory(d) => {
                    s.directories += 1;
                    stack.push(d);
                }
                Inode::Leaf(..) => {}
            }
        }
    }
    for (i, leaf) in tree.leaves.iter().enumerate() {
        s.hardlinks += u64::from(nlinks[i].saturating_sub(1));
        match &leaf.content {
            LeafContent::Regular(f) => {
                s.regular_files += 1;
                s.logical_bytes += f.file_size();
                match f {
                    RegularFile::Inline(data) => s.inline_bytes += data.len() as u64,
                    RegularFile::External(id, size) | RegularFile::ExternalNoVerity(id, size) => {
                        s.external_files += 1;
                        if objects.insert(id) {
                            s.unique_objects += 1;
                            s.unique_bytes += size;
                        }
                    }
                    RegularFile::Sparse(_) => {}
                }
            }
            LeafContent::Symlink(_) => s.symlinks += 1,
            _ => s.special += 1,
        }
    }
    s
}

/// The objects a tree references.
pub fn objects(tree: &Tree) -> HashSet<ObjectId> {
    tree.leaves
        .iter()
        .filter_map(|l| match &l.content {
            LeafContent::Regular(
                RegularFile::External(id, _) | RegularFile::ExternalNoVerity(id, _),
            ) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// The objects a tree references, with their sizes.
pub fn object_sizes(tree: &Tree) -> std::collections::HashMap<ObjectId, u64> {
    tree.leaves
        .iter()
        .filter_map(|l| match &l.content {
            LeafContent::Regular(
                RegularFile::External(id, size) | RegularFile::ExternalNoVerity(id, size),
            ) => Some((id.clone(), *size)),
            _ => None,
        })
        .collect()
}

/// Writes the composefs dumpfile of a tree.
pub fn write_dumpfile(out: &mut impl std::io::Write, tree: &Tree) -> std::io::Result<()> {
    // Keep the io::Error (a closed pipe must stay BrokenPipe).
    composefs::dumpfile::write_dumpfile(out, tree).map_err(|e| {
        e.downcast::<std::io::Error>()
            .unwrap_or_else(std::io::Error::other)
    })
}

/// The hex ID of an object, for messages.
pub(crate) fn hex(id: &ObjectId) -> String {
    id.to_hex()
}
