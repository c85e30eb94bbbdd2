//! The inode table a FUSE server answers from.
//!
//! Built once from an image's tree and never changed: the tree is immutable,
//! so lookups, getattr and readdir read a `Vec` without any lock or per-request
//! allocation, and `forget` has nothing to free. Inode numbers are positions
//! in a breadth-first walk with sorted names, so the same image gets the same
//! numbers in every server (stable across restarts); hardlinks share one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use composefs::generic_tree::{LeafContent, LeafId, Stat};
use composefs::tree::{Directory, Inode, RegularFile};
use fuser::{FileAttr, FileType, INodeNo};

use crate::store::{ObjectId, Tree};

/// Where a regular file's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    /// In the inode table.
    Inline(Box<[u8]>),
    /// In an object of the store.
    Object(ObjectId),
    /// Zeros.
    Zeros,
}

/// What an inode is.
#[derive(Debug)]
pub enum NodeKind {
    /// A directory: children sorted by name.
    Dir(Box<[(Box<OsStr>, u64)]>),
    /// A regular file.
    File(Content),
    /// A symlink and its target.
    Symlink(Box<[u8]>),
    /// A device, fifo or socket.
    Special,
}

/// One inode.
#[derive(Debug)]
pub struct Node {
    /// Attributes, ready to send.
    pub attr: FileAttr,
    /// The parent directory (the root is its own parent).
    pub parent: u64,
    /// What it is.
    pub kind: NodeKind,
    /// Extended attributes, sorted by name.
    pub xattrs: Xattrs,
}

/// Extended attributes: (name, value) pairs sorted by name.
pub type Xattrs = Box<[(Box<OsStr>, Box<[u8]>)]>;

/// The inode table of one image.
#[derive(Debug)]
pub struct Inodes {
    nodes: Vec<Node>,
    /// Sum of regular file sizes (each inode once).
    pub bytes: u64,
}

fn time(st: &Stat) -> SystemTime {
    if st.st_mtim_sec >= 0 {
        UNIX_EPOCH + Duration::new(st.st_mtim_sec as u64, st.st_mtim_nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(st.st_mtim_sec.unsigned_abs())
            + Duration::from_nanos(u64::from(st.st_mtim_nsec))
    }
}

fn attr(ino: u64, st: &Stat, kind: FileType, size: u64, nlink: u32, rdev: u64) -> FileAttr {
    let t = time(st);
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn xattrs(st: &Stat) -> Xattrs {
    st.xattrs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Inodes {
    /// Builds the table of `tree`.
    pub fn new(tree: &Tree) -> Inodes {
        let nlinks = tree.nlinks();
        let mut nodes: Vec<Node> = Vec::new();
        let mut leaf_ino: HashMap<LeafId, u64> = HashMap::new();
        let mut bytes = 0;
        // Breadth-first; a directory's children get numbers when it is visited.
        let mut queue: std::collections::VecDeque<(&Directory<ObjectId>, u64, u64)> =
            Default::default();
        nodes.push(Node {
            attr: attr(1, &tree.root.stat, FileType::Directory, 0, 2, 0),
            parent: 1,
            kind: NodeKind::Dir(Box::new([])),
            xattrs: xattrs(&tree.root.stat),
        });
        queue.push_back((&tree.root, 1, 1));
        while let Some((dir, ino, parent)) = queue.pop_front() {
            let mut children = Vec::new();
            let mut subdirs = 0u32;
            for (name, inode) in dir.sorted_entries() {
                let child = match inode {
                    Inode::Directory(d) => {
                        subdirs += 1;
                        let c = nodes.len() as u64 + 1;
                        nodes.push(Node {
                            attr: attr(c, &d.stat, FileType::Directory, 0, 2, 0),
                            parent: ino,
                            kind: NodeKind::Dir(Box::new([])),
                            xattrs: xattrs(&d.stat),
                        });
                        queue.push_back((d, c, ino));
                        c
                    }
                    Inode::Leaf(id, _) => {
                        if let Some(&c) = leaf_ino.get(id) {
                            c
                        } else {
                            let c = nodes.len() as u64 + 1;
                            let leaf = tree.leaf(*id);
                            let n = nlinks[id.0];
                            let (kind, ft, size, rdev) = match &leaf.content {
                                LeafContent::Regular(f) => {
                                    bytes += f.file_size();
                                    let content = match f {
                                        RegularFile::Inline(d) => Content::Inline(d.clone()),
                                        RegularFile::External(o, _)
                                        | RegularFile::ExternalNoVerity(o, _) => {
                                            Content::Object(o.clone())
                                        }
                                        RegularFile::Sparse(_) => Content::Zeros,
                                    };
                                    (
                                        NodeKind::File(content),
                                        FileType::RegularFile,
                                        f.file_size(),
                                        0,
                                    )
                                }
                                LeafContent::Symlink(t) => {
                                    let t: Box<[u8]> =
                                        Box::from(std::os::unix::ffi::OsStrExt::as_bytes(&**t));
                                    let len = t.len() as u64;
                                    (NodeKind::Symlink(t), FileType::Symlink, len, 0)
                                }
                                LeafContent::CharacterDevice(d) => {
                                    (NodeKind::Special, FileType::CharDevice, 0, *d)
                                }
                                LeafContent::BlockDevice(d) => {
                                    (NodeKind::Special, FileType::BlockDevice, 0, *d)
                                }
                                LeafContent::Fifo => (NodeKind::Special, FileType::NamedPipe, 0, 0),
                                LeafContent::Socket => (NodeKind::Special, FileType::Socket, 0, 0),
                            };
                            nodes.push(Node {
                                attr: attr(c, &leaf.stat, ft, size, n, rdev),
                                parent: ino,
                                kind,
                                xattrs: xattrs(&leaf.stat),
                            });
                            leaf_ino.insert(*id, c);
                            c
                        }
                    }
                };
                children.push((Box::from(name), child));
            }
            let node = &mut nodes[ino as usize - 1];
            node.kind = NodeKind::Dir(children.into_boxed_slice());
            node.attr.nlink = 2 + subdirs;
            node.parent = parent;
        }
        Inodes { nodes, bytes }
    }

    /// The inode `ino`, if it exists.
    #[inline]
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get((ino as usize).wrapping_sub(1))
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when empty (never: there is a root).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Looks `name` up in directory `parent`.
    #[inline]
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<&Node> {
        let NodeKind::Dir(children) = &self.get(parent)?.kind else {
            return None;
        };
        let i = children.binary_search_by(|(n, _)| (**n).cmp(name)).ok()?;
        self.get(children[i].1)
    }
}
