//! FAT32 images of bundles, written and read without root (no mount, no
//! loop device): `ferry bundle export --out FILE.img` writes them with
//! dosfstools and mtools (the tools fsck.vfat agrees with); `ferry import
//! FILE.img` reads them in-process (fatfs), as it reads a stick formatted
//! and filled by anything else.
//!
//! The image is untrusted: extraction reads the marker first (an image
//! without one is refused before anything else is copied), bounds the
//! number of files, the entries per directory, the directory depth, and the
//! total size by the limit, the image's length and the free space where it
//! is extracted; and every byte read from the image counts against a
//! budget of a few times its length, so cluster chains that loop (a file
//! or a directory whose chain points back into itself) end in an error
//! instead of endless reading. Only plain names (no `..`, no separators)
//! and only files and directories are accepted.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::BundleError;

/// Bounds on what an image may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_files: u64,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 30,
            max_files: 100_000,
            max_depth: 16,
        }
    }
}

const MIB: u64 = 1 << 20;
/// FAT32 needs at least 65525 clusters; fatfs picks the cluster size from
/// the volume size, and this is comfortably above its FAT32 minimum.
const MIN_IMAGE_BYTES: u64 = 64 * MIB;

/// The volume label: what FAT allows, upper case, at most 11 characters.
fn volume_label(label: &str) -> String {
    let l: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(11)
        .collect::<String>()
        .to_ascii_uppercase();
    if l.is_empty() { "FERRY".into() } else { l }
}

/// Writes the directory `src` into a new FAT32 image file `image` of
/// `size` bytes (default: what the files need plus slack, at least 64 MiB),
/// labelled `label`, with `mkfs.vfat` (dosfstools) and `mcopy` (mtools):
/// no root, no mount. The image appears only when complete.
pub fn write_image(
    src: &Path,
    image: &Path,
    label: &str,
    size: Option<u64>,
) -> Result<u64, BundleError> {
    let payload = dir_size(src)?;
    let size = size.unwrap_or_else(|| {
        (payload + payload / 16 + 16 * MIB)
            .max(MIN_IMAGE_BYTES)
            .div_ceil(MIB)
            * MIB
    });
    let tmp = image.with_extension("img.part");
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let tool = |cmd: &mut std::process::Command, what: &str| -> Result<(), BundleError> {
            let out = cmd
                .env("MTOOLS_SKIP_CHECK", "1")
                .output()
                .map_err(|e| BundleError::Invalid {
                    path: image.to_owned(),
                    reason: format!(
                        "{what}: {e} (FAT images are written with mkfs.vfat from dosfstools and mcopy from mtools)"
                    ),
                })?;
            if out.status.success() {
                return Ok(());
            }
            let err = String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ");
            if err.to_ascii_lowercase().contains("disk full") {
                return Err(BundleError::NoSpace {
                    path: image.to_owned(),
                    reason: format!(
                        "the bundle ({payload} bytes) does not fit in an image of {size} bytes: {err}"
                    ),
                });
            }
            Err(BundleError::Invalid {
                path: image.to_owned(),
                reason: format!("{what}: {err}"),
            })
        };
        tool(
            std::process::Command::new("mkfs.vfat")
                .args(["-F", "32", "-n", &volume_label(label), "-C"])
                .arg(&tmp)
                .arg((size / 1024).to_string()),
            "mkfs.vfat",
        )?;
        // mcopy on a full volume leaves confusing errors: check first.
        let free = free_bytes(&tmp).ok_or_else(|| BundleError::Invalid {
            path: image.to_owned(),
            reason: "mdir does not say how much space the new volume has".into(),
        })?;
        if payload > free {
            return Err(BundleError::NoSpace {
                path: image.to_owned(),
                reason: format!(
                    "the bundle (about {payload} bytes on FAT) does not fit in an image of {size} bytes ({free} bytes free)"
                ),
            });
        }
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| BundleError::io("reading", src, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| BundleError::io("reading", src, e))?;
        entries.sort();
        // The marker last, as in the directory: an image cut short has none.
        entries.sort_by_key(|p| p.ends_with(super::MARKER));
        tool(
            std::process::Command::new("mcopy")
                .args(["-s", "-Q", "-i"])
                .arg(&tmp)
                .args(&entries)
                .arg("::/"),
            "mcopy",
        )?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| BundleError::io("writing", &tmp, e))
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, image).map_err(|e| BundleError::io("renaming", &tmp, e))?;
    Ok(size)
}

/// The free bytes `mdir` reports for a FAT image.
fn free_bytes(image: &Path) -> Option<u64> {
    let out = std::process::Command::new("mdir")
        .arg("-i")
        .arg(image)
        .arg("::/")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_end().ends_with("bytes free"))?;
    line.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// What `dir` takes on FAT: files rounded up to 4 KiB clusters (the
/// largest mkfs.vfat picks for images of this size), a cluster per directory.
/// The largest file FAT32 holds (its sizes are 32-bit).
pub const FAT32_MAX_FILE: u64 = u32::MAX as u64;

/// The bytes `dir` takes on a FAT32 volume; a file FAT32 cannot hold is
/// refused by name before anything is written.
fn dir_size(dir: &Path) -> Result<u64, BundleError> {
    let mut total = 4096;
    for e in std::fs::read_dir(dir).map_err(|e| BundleError::io("reading", dir, e))? {
        let e = e.map_err(|e| BundleError::io("reading", dir, e))?;
        let m = e
            .metadata()
            .map_err(|err| BundleError::io("reading", e.path(), err))?;
        if !m.is_dir() && m.len() > FAT32_MAX_FILE {
            return Err(BundleError::Invalid {
                path: e.path(),
                reason: format!(
                    "{} bytes: FAT32 holds files of at most 4 GiB - 1 byte; export to a directory on an exFAT or ext4 stick, or carry the firmware by delta (--delta-from)",
                    m.len()
                ),
            });
        }
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len().div_ceil(4096) * 4096
        };
    }
    Ok(total)
}

/// An image file opened read-only: fatfs wants a writable device, and an
/// import must never write to the stick. Reads go through a block cache
/// (fatfs reads directory entries 32 bytes at a time) and are counted: a
/// consistent file system is read about once (data once, directories and
/// FAT entries a few times), so a budget of a few times the image's length
/// only runs out when cluster chains loop.
struct ReadOnly {
    file: std::fs::File,
    pos: u64,
    block: Vec<u8>,
    block_start: u64,
    budget: u64,
    image_len: u64,
}

const BLOCK: u64 = 64 * 1024;

impl ReadOnly {
    fn new(file: std::fs::File, image_len: u64) -> ReadOnly {
        ReadOnly {
            file,
            pos: 0,
            block: Vec::new(),
            block_start: 0,
            budget: read_budget(image_len),
            image_len,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        self.block_start = self.pos - self.pos % BLOCK;
        self.block.clear();
        self.file.seek(SeekFrom::Start(self.block_start))?;
        (&mut self.file).take(BLOCK).read_to_end(&mut self.block)?;
        Ok(())
    }
}

/// Image bytes extraction may read, for an image of `len` bytes.
fn read_budget(len: u64) -> u64 {
    len.saturating_mul(3).saturating_add(16 * MIB)
}

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "read more than {} bytes from a {}-byte image: its cluster chains loop",
                    read_budget(self.image_len),
                    self.image_len
                ),
            ));
        }
        let end = self.block_start + self.block.len() as u64;
        if self.pos < self.block_start || self.pos >= end {
            self.fill()?;
        }
        let at = usize::try_from(self.pos - self.block_start).unwrap_or(usize::MAX);
        let Some(avail) = self.block.get(at..) else {
            return Ok(0);
        };
        let n = buf
            .len()
            .min(avail.len())
            .min(usize::try_from(self.budget).unwrap_or(usize::MAX));
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n as u64;
        self.budget -= n as u64;
        Ok(n)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.image_len.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the image",
            )
        })?;
        Ok(self.pos)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the image is read only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Extracts the FAT image `image` into the empty directory `dest` within
/// `limits`; returns the volume label. A corrupt or truncated image fails
/// with an error naming the image and what could not be read.
pub fn extract(image: &Path, dest: &Path, limits: &Limits) -> Result<String, BundleError> {
    let mut f = std::fs::File::open(image).map_err(|e| BundleError::io("opening", image, e))?;
    let invalid = |reason: String| BundleError::Invalid {
        path: image.to_owned(),
        reason,
    };
    // A cut-short image reads as empty directories: compare its length
    // with the size the boot sector declares first.
    let boot = read_boot(&mut f, image)?;
    let len = f
        .seek(SeekFrom::End(0))
        .and_then(|len| f.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|e| BundleError::io("reading", image, e))?;
    if boot.size > len {
        return Err(invalid(format!(
            "truncated: its file system spans {} bytes, the image has {len}",
            boot.size
        )));
    }
    check_chains(&mut f, &boot.fat).map_err(invalid)?;
    let ro = ReadOnly::new(f, len);
    let fs = fatfs::FileSystem::new(ro, fatfs::FsOptions::new())
        .map_err(|e| invalid(format!("not a readable FAT file system: {e}")))?;
    std::fs::create_dir_all(dest).map_err(|e| BundleError::io("creating", dest, e))?;
    // No file system holds more file bytes than its image is long (a chain
    // that loops claims more); nothing is written that does not fit.
    let free = rustix::fs::statvfs(dest)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .map_err(|e| BundleError::io("checking free space in", dest, e.into()))?;
    let mut budget = Budget {
        files: limits.max_files,
        max_bytes: limits.max_bytes,
        limit: limits.max_bytes,
        image: len,
        free,
    };
    let root = fs.root_dir();
    // The marker first: an image that is no bundle is refused before
    // anything else is read or written.
    let marker = find(&root, super::MARKER, image)?.ok_or_else(|| BundleError::NoMarker {
        path: image.to_owned(),
    })?;
    if !marker.is_file() || marker.len() > super::MAX_MARKER_BYTES {
        return Err(invalid(format!(
            "/{}: not a file of at most {} bytes",
            super::MARKER,
            super::MAX_MARKER_BYTES
        )));
    }
    copy_file(
        &marker,
        &dest.join(super::MARKER),
        &format!("/{}", super::MARKER),
        &mut budget,
        image,
    )?;
    super::read_marker(dest, image)?;
    copy_out(&root, dest, "", limits, 0, &mut budget, image)?;
    Ok(boot.id.name())
}

/// What extraction may still create and write: files, bytes by the limit,
/// by the image's length, and by the free space where it extracts.
struct Budget {
    files: u64,
    max_bytes: u64,
    limit: u64,
    image: u64,
    free: u64,
}

/// Most entries a FAT directory can have (FAT's own limit: 65536 slots).
const MAX_DIR_ENTRIES: u64 = 65_536;

/// The entry `name` of `dir` (case-insensitive, as FAT names are).
fn find<'a, T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'a, T>,
    name: &str,
    image: &Path,
) -> Result<Option<fatfs::DirEntry<'a, T>>, BundleError> {
    for (i, entry) in dir.iter().enumerate() {
        if i as u64 >= MAX_DIR_ENTRIES {
            break;
        }
        let entry = entry.map_err(|e| BundleError::Invalid {
            path: image.to_owned(),
            reason: format!("/: unreadable directory: {e}"),
        })?;
        if entry.file_name().eq_ignore_ascii_case(name) {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Copies one file out of the image, within the budget.
fn copy_file<T: fatfs::ReadWriteSeek>(
    entry: &fatfs::DirEntry<'_, T>,
    to: &Path,
    here: &str,
    budget: &mut Budget,
    image: &Path,
) -> Result<(), BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: image.to_owned(),
        reason,
    };
    let len = entry.len();
    if len > budget.limit {
        return Err(invalid(format!(
            "{here}: the image holds more than {} bytes",
            budget.max_bytes
        )));
    }
    if len > budget.image {
        return Err(invalid(format!(
            "{here}: the files claim more bytes than the image has (inconsistent or looping cluster chains)"
        )));
    }
    if len > budget.free {
        return Err(BundleError::NoSpace {
            path: image.to_owned(),
            reason: format!(
                "{here}: {len} bytes do not fit in the {} bytes free in {}",
                budget.free,
                to.parent().unwrap_or(to).display()
            ),
        });
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| BundleError::io("creating", to, e))?;
    let mut from = entry.to_file();
    let copied = io::copy(&mut (&mut from).take(len), &mut out)
        .map_err(|e| invalid(format!("{here}: unreadable: {e}")))?;
    if copied != len {
        return Err(invalid(format!(
            "{here}: {copied} of {len} bytes readable (truncated image?)"
        )));
    }
    budget.limit -= len;
    budget.image -= len;
    budget.free -= len;
    Ok(())
}

/// A FAT volume's label and serial number, from its boot sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeId {
    pub label: String,
    /// `XXXX-XXXX`, as `blkid` and Windows show it.
    pub serial: String,
}

impl VolumeId {
    /// `LABEL/SERIAL` (`SERIAL` alone when unlabelled): how the audit
    /// journal names a stick.
    pub fn name(&self) -> String {
        if self.label.is_empty() {
            self.serial.clone()
        } else {
            format!("{}/{}", self.label, self.serial)
        }
    }
}

struct Boot {
    size: u64,
    id: VolumeId,
    fat: FatLayout,
}

/// Where the file allocation tables are and what their entries look like.
#[derive(Debug, Clone, Copy)]
struct FatLayout {
    /// Byte offset of the first FAT.
    offset: u64,
    /// Bytes of one FAT.
    bytes: u64,
    copies: u64,
    /// Data clusters (numbered 2 ..= clusters + 1).
    clusters: u64,
    /// 12, 16 or 32.
    bits: u8,
}

/// Reads the label and serial of the FAT volume on `dev` (a partition or
/// an image file), reading only its boot sector.
pub fn volume_id(dev: &Path) -> Result<VolumeId, BundleError> {
    let mut f = std::fs::File::open(dev).map_err(|e| BundleError::io("opening", dev, e))?;
    Ok(read_boot(&mut f, dev)?.id)
}

fn read_boot(f: &mut std::fs::File, path: &Path) -> Result<Boot, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let mut b = [0u8; 512];
    f.read_exact(&mut b)
        .map_err(|e| invalid(format!("not a FAT file system: no boot sector: {e}")))?;
    let bytes_per_sector = u64::from(u16::from_le_bytes([b[11], b[12]]));
    if b[510..] != [0x55, 0xaa] || ![512, 1024, 2048, 4096].contains(&bytes_per_sector) {
        return Err(invalid(
            "not a FAT file system (no valid boot sector)".to_owned(),
        ));
    }
    let sectors = match u16::from_le_bytes([b[19], b[20]]) {
        0 => u64::from(u32::from_le_bytes([b[32], b[33], b[34], b[35]])),
        n => u64::from(n),
    };
    // FAT32 (no 16-bit FAT size) keeps its extended fields further on.
    let ext = if u16::from_le_bytes([b[22], b[23]]) == 0 {
        64
    } else {
        36
    };
    let serial = u32::from_le_bytes([b[ext + 3], b[ext + 4], b[ext + 5], b[ext + 6]]);
    let label: String = if b[ext + 2] == 0x29 {
        String::from_utf8_lossy(&b[ext + 7..ext + 18])
            .trim()
            .to_owned()
    } else {
        String::new()
    };
    let label = if label == "NO NAME" {
        String::new()
    } else {
        label
    };
    let reserved = u64::from(u16::from_le_bytes([b[14], b[15]]));
    let copies = u64::from(b[16]);
    let root_entries = u64::from(u16::from_le_bytes([b[17], b[18]]));
    let fat_sectors = match u16::from_le_bytes([b[22], b[23]]) {
        0 => u64::from(u32::from_le_bytes([b[36], b[37], b[38], b[39]])),
        n => u64::from(n),
    };
    let per_cluster = u64::from(b[13]);
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let meta = reserved + copies * fat_sectors + root_sectors;
    let clusters = sectors.saturating_sub(meta) / per_cluster.max(1);
    // FAT's own rule: the type follows from the number of clusters.
    let bits = if clusters < 4085 {
        12
    } else if clusters < 65525 {
        16
    } else {
        32
    };
    Ok(Boot {
        size: bytes_per_sector * sectors,
        id: VolumeId {
            label,
            serial: format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff),
        },
        fat: FatLayout {
            offset: reserved * bytes_per_sector,
            bytes: fat_sectors * bytes_per_sector,
            copies,
            clusters,
            bits,
        },
    })
}

/// Largest FAT read to check its chains (FAT32 on a 2 TB volume with 32 KiB
/// clusters has a 256 MiB FAT; sticks have far smaller ones).
const MAX_FAT_BYTES: u64 = 256 * MIB;

/// Refuses a FAT whose cluster chains loop or share clusters: fatfs would
/// follow a loop for as long as the entry's size (a file) or for ever (a
/// directory). In a consistent FAT every chain ends, and no cluster follows
/// two others. Checks every copy; one pass over each, a bit per cluster.
fn check_chains(f: &mut std::fs::File, fat: &FatLayout) -> Result<(), String> {
    if fat.bits == 12 {
        // At most 4084 clusters: the read budget bounds any loop cheaply.
        return Ok(());
    }
    let entry_bytes = u64::from(fat.bits / 8);
    let needed = (fat.clusters + 2) * entry_bytes;
    if needed > fat.bytes || fat.bytes > MAX_FAT_BYTES {
        return Err(format!(
            "its FAT ({} bytes for {} clusters) is inconsistent or too large",
            fat.bytes, fat.clusters
        ));
    }
    let n = usize::try_from(fat.clusters + 2).map_err(|_| "too many clusters".to_owned())?;
    for copy in 0..fat.copies.max(1) {
        let mut table = vec![0u8; usize::try_from(needed).unwrap_or(usize::MAX)];
        f.seek(SeekFrom::Start(fat.offset + copy * fat.bytes))
            .and_then(|_| f.read_exact(&mut table))
            .map_err(|e| format!("its FAT is unreadable: {e}"))?;
        let next = |c: usize| -> Option<usize> {
            let v = if fat.bits == 16 {
                u32::from(u16::from_le_bytes([table[2 * c], table[2 * c + 1]]))
            } else {
                u32::from_le_bytes([
                    table[4 * c],
                    table[4 * c + 1],
                    table[4 * c + 2],
                    table[4 * c + 3],
                ]) & 0x0FFF_FFFF
            };
            let v = v as usize;
            (2..n).contains(&v).then_some(v)
        };
        // A cluster with two predecessors is shared by two chains.
        let mut has_pred = vec![0u64; n.div_ceil(64)];
        let bit = |v: &mut [u64], i: usize| {
            let was = v[i / 64] >> (i % 64) & 1 == 1;
            v[i / 64] |= 1 << (i % 64);
            was
        };
        for c in 2..n {
            if let Some(m) = next(c)
                && bit(&mut has_pred, m)
            {
                return Err(format!(
                    "its FAT (copy {copy}) links cluster {m} into two chains (cross-linked files)"
                ));
            }
        }
        // With at most one predecessor each, a loop is a closed ring: walk
        // each chain once, remembering where it started.
        let mut seen = vec![0u64; n.div_ceil(64)];
        for start in 2..n {
            if bit(&mut seen, start) {
                continue;
            }
            let mut c = start;
            while let Some(m) = next(c) {
                if m == start {
                    return Err(format!(
                        "its FAT (copy {copy}) has a cluster chain that loops (through cluster {m})"
                    ));
                }
                if bit(&mut seen, m) {
                    break;
                }
                c = m;
            }
        }
    }
    Ok(())
}

fn copy_out<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    dest: &Path,
    shown: &str,
    limits: &Limits,
    depth: usize,
    budget: &mut Budget,
    image: &Path,
) -> Result<(), BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: image.to_owned(),
        reason,
    };
    if depth > limits.max_depth {
        return Err(invalid(format!(
            "{shown}: directories nested deeper than {}",
            limits.max_depth
        )));
    }
    for (i, entry) in dir.iter().enumerate() {
        if i as u64 >= MAX_DIR_ENTRIES {
            return Err(invalid(format!(
                "{shown}/: more than {MAX_DIR_ENTRIES} directory entries"
            )));
        }
        let entry = entry.map_err(|e| invalid(format!("{shown}/: unreadable directory: {e}")))?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let here = format!("{shown}/{name}");
        if name.is_empty() || name.contains(['/', '\\', '\0']) || name.chars().any(char::is_control)
        {
            return Err(invalid(format!("{here:?}: not a plain file name")));
        }
        if depth == 0 && name.eq_ignore_ascii_case(super::MARKER) {
            continue; // copied first
        }
        if budget.files == 0 {
            return Err(invalid(format!("more than {} files", limits.max_files)));
        }
        budget.files -= 1;
        let to = dest.join(&name);
        if entry.is_dir() {
            std::fs::create_dir(&to).map_err(|e| BundleError::io("creating", &to, e))?;
            copy_out(
                &entry.to_dir(),
                &to,
                &here,
                limits,
                depth + 1,
                budget,
                image,
            )?;
        } else if entry.is_file() {
            copy_file(&entry, &to, &here, budget, image)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An image written by mkfs.vfat + mcopy from a tree of `files`.
    fn image(dir: &Path, files: &[(&str, &[u8])]) -> std::path::PathBuf {
        let src = dir.join("src");
        for (name, content) in files {
            let p = src.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        let img = dir.join("stick.img");
        write_image(&src, &img, "Site 7!", None).unwrap();
        img
    }

    const MARKER: &[u8] = br#"{"format":1,"kind":"tuf","created":"2026-01-01T00:00:00Z","revision":"r","files":1,"bytes":1}"#;

    fn reason(e: BundleError) -> String {
        match e {
            BundleError::Invalid { reason, .. } => reason,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn a_file_over_the_fat32_limit_is_refused_by_name_and_leaves_no_image() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("tuf/targets")).unwrap();
        // Sparse: 4 GiB takes no disk.
        let big = src.join("tuf/targets/os.img");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(FAT32_MAX_FILE + 1)
            .unwrap();
        let img = dir.path().join("stick.img");
        let e = write_image(&src, &img, "SITE", None).unwrap_err();
        assert!(e.to_string().contains("os.img"), "{e}");
        assert!(reason(e).contains("at most 4 GiB"));
        assert!(!img.exists() && !img.with_extension("img.part").exists());
    }

    #[test]
    fn images_round_trip_long_names_and_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("tuf/targets/files/{}.manifest.yaml", "ab".repeat(32));
        let img = image(
            dir.path(),
            &[
                ("ferry-bundle.json", MARKER),
                (&long, b"hello"),
                ("a/b/c/d.txt", b"deep"),
            ],
        );
        let out = dir.path().join("out");
        let name = extract(&img, &out, &Limits::default()).unwrap();
        assert!(name.starts_with("SITE7/"), "{name}");
        assert_eq!(std::fs::read(out.join(&long)).unwrap(), b"hello");
        assert_eq!(std::fs::read(out.join("a/b/c/d.txt")).unwrap(), b"deep");
        assert_eq!(volume_id(&img).unwrap().label, "SITE7");
    }

    #[test]
    fn extraction_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(
            dir.path(),
            &[
                ("ferry-bundle.json", MARKER),
                ("1", b"x"),
                ("2", b"y"),
                ("3", &[0u8; 4096]),
                ("d/e/f/g", b"z"),
            ],
        );
        let run = |limits: Limits, n: &str| {
            let out = dir.path().join(n);
            reason(extract(&img, &out, &limits).unwrap_err())
        };
        let d = Limits::default();
        let r = run(Limits { max_files: 3, ..d }, "a");
        assert!(r.contains("more than 3 files"), "{r}");
        let r = run(
            Limits {
                max_bytes: 100,
                ..d
            },
            "b",
        );
        assert!(r.contains("more than 100 bytes"), "{r}");
        let r = run(Limits { max_depth: 1, ..d }, "c");
        assert!(r.contains("nested deeper than 1"), "{r}");
    }

    #[test]
    fn not_fat_and_cut_short_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, [0x5au8; 4096]).unwrap();
        let r = reason(extract(&garbage, &dir.path().join("o1"), &Limits::default()).unwrap_err());
        assert!(r.contains("not a FAT file system"), "{r}");
        let tiny = dir.path().join("tiny");
        std::fs::write(&tiny, [0u8; 100]).unwrap();
        let r = reason(extract(&tiny, &dir.path().join("o2"), &Limits::default()).unwrap_err());
        assert!(r.contains("no boot sector"), "{r}");
        let img = image(dir.path(), &[("f", b"x")]);
        let bytes = std::fs::read(&img).unwrap();
        std::fs::write(&img, &bytes[..1 << 20]).unwrap();
        let r = reason(extract(&img, &dir.path().join("o3"), &Limits::default()).unwrap_err());
        assert!(r.contains("truncated"), "{r}");
    }

    /// FAT32 geometry of an image, for making hostile ones.
    struct Geometry {
        cluster: u64,
        fat: u64,
        fat_bytes: u64,
        fats: u64,
        data: u64,
        root: u32,
    }

    fn geometry(img: &[u8]) -> Geometry {
        let u16le = |o: usize| u64::from(u16::from_le_bytes([img[o], img[o + 1]]));
        let u32le = |o: usize| u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]);
        let sector = u16le(11);
        let reserved = u16le(14);
        let fats = u64::from(img[16]);
        let fat_sectors = u64::from(u32le(36));
        Geometry {
            cluster: sector * u64::from(img[13]),
            fat: reserved * sector,
            fat_bytes: fat_sectors * sector,
            fats,
            data: (reserved + fats * fat_sectors) * sector,
            root: u32le(44),
        }
    }

    impl Geometry {
        fn offset(&self, cluster: u32) -> usize {
            (self.data + u64::from(cluster - 2) * self.cluster) as usize
        }

        /// Points `cluster`'s FAT entry (in every FAT copy) at `next`.
        fn link(&self, img: &mut [u8], cluster: u32, next: u32) {
            for i in 0..self.fats {
                let o = (self.fat + i * self.fat_bytes + u64::from(cluster) * 4) as usize;
                img[o..o + 4].copy_from_slice(&next.to_le_bytes());
            }
        }

        /// The offset of the root directory entry with 8.3 name `short`.
        fn entry(&self, img: &[u8], short: &[u8; 11]) -> usize {
            let root = self.offset(self.root);
            (root..root + self.cluster as usize)
                .step_by(32)
                .find(|&o| &img[o..o + 11] == short)
                .expect("entry")
        }

        fn first_cluster(img: &[u8], entry: usize) -> u32 {
            u32::from(u16::from_le_bytes([img[entry + 20], img[entry + 21]])) << 16
                | u32::from(u16::from_le_bytes([img[entry + 26], img[entry + 27]]))
        }
    }

    fn written_bytes(dir: &Path) -> u64 {
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            n += if m.is_dir() {
                written_bytes(&e.path())
            } else {
                m.len()
            };
        }
        n
    }

    /// Regression: a file whose cluster chain loops was read up to its
    /// declared size (a small image wrote 933 MB before the marker was
    /// even read).
    #[test]
    fn a_looping_file_chain_is_refused_by_the_image_length() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(
            dir.path(),
            &[("ferry-bundle.json", b"{}"), ("F", &[7u8; 100])],
        );
        let mut bytes = std::fs::read(&img).unwrap();
        let g = geometry(&bytes);
        let e = g.entry(&bytes, b"F          ");
        let c = Geometry::first_cluster(&bytes, e);
        g.link(&mut bytes, c, c);
        bytes[e + 28..e + 32].copy_from_slice(&0xF000_0000u32.to_le_bytes());
        std::fs::write(&img, &bytes).unwrap();
        let out = dir.path().join("out");
        let e = extract(&img, &out, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("cluster chain that loops"), "{e}");
        assert!(!out.exists() || written_bytes(&out) < 1024);
    }

    /// Regression: a directory cluster pointing to itself, full of deleted
    /// entries, kept extraction spinning for ever (holding the state lock).
    #[test]
    fn a_directory_chain_that_loops_ends_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(
            dir.path(),
            &[
                ("ferry-bundle.json", MARKER),
                ("D/x", b"x"),
                ("F", &[7u8; 100]),
            ],
        );
        let mut bytes = std::fs::read(&img).unwrap();
        let g = geometry(&bytes);
        let d = Geometry::first_cluster(&bytes, g.entry(&bytes, b"D          "));
        let at = g.offset(d);
        for o in (at..at + g.cluster as usize).step_by(32) {
            bytes[o] = 0xE5; // deleted
            bytes[o + 11] = 0x20;
        }
        g.link(&mut bytes, d, d);
        let f = g.entry(&bytes, b"F          ");
        let c = Geometry::first_cluster(&bytes, f);
        std::fs::write(&img, &bytes).unwrap();
        let r = reason(extract(&img, &dir.path().join("o1"), &Limits::default()).unwrap_err());
        assert!(r.contains("cluster chain that loops"), "{r}");
        // A file chain that loops within the image's length: bounded by the
        // read budget or by the bytes the image can hold, never endless.
        let mut bytes = std::fs::read(&img).unwrap();
        g.link(&mut bytes, d, 0x0FFF_FFFF);
        g.link(&mut bytes, c, c);
        let len = bytes.len() as u32;
        bytes[f + 28..f + 32].copy_from_slice(&(len / 2).to_le_bytes());
        std::fs::write(&img, &bytes).unwrap();
        let r = reason(extract(&img, &dir.path().join("o2"), &Limits::default()).unwrap_err());
        assert!(r.contains("cluster chain that loops"), "{r}");
        // Two files sharing a cluster (cross-linked).
        let mut bytes = std::fs::read(&img).unwrap();
        g.link(&mut bytes, c, 0x0FFF_FFFF);
        let x = Geometry::first_cluster(&bytes, g.entry(&bytes, b"D          "));
        g.link(&mut bytes, x, c);
        let marker = Geometry::first_cluster(&bytes, g.entry(&bytes, b"FERRY-~1JSO"));
        g.link(&mut bytes, marker, c);
        std::fs::write(&img, &bytes).unwrap();
        let r = reason(extract(&img, &dir.path().join("o3"), &Limits::default()).unwrap_err());
        assert!(r.contains("two chains"), "{r}");
    }

    #[test]
    fn an_image_without_marker_is_refused_before_copying() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path(), &[("big", &vec![1u8; 1 << 20])]);
        let out = dir.path().join("out");
        let e = extract(&img, &out, &Limits::default()).unwrap_err();
        assert!(matches!(e, BundleError::NoMarker { .. }), "{e}");
        assert_eq!(written_bytes(&out), 0);
    }

    #[test]
    fn labels_are_what_fat_allows() {
        assert_eq!(volume_label("Site 7!"), "SITE7");
        assert_eq!(volume_label("a-very-long-label"), "A-VERY-LONG");
        assert_eq!(volume_label("///"), "FERRY");
    }
}
