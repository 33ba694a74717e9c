//! FAT32 images of bundles, written and read without root (no mount, no
//! loop device): `ferry bundle export --out FILE.img` writes them with
//! dosfstools and mtools (the tools fsck.vfat agrees with); `ferry import
//! FILE.img` reads them in-process (fatfs), as it reads a stick formatted
//! and filled by anything else.
//!
//! The image is untrusted: extraction bounds the number of files, their
//! total size and the directory depth, accepts only plain names (no `..`,
//! no separators) and only files and directories.

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
fn dir_size(dir: &Path) -> Result<u64, BundleError> {
    let mut total = 4096;
    for e in std::fs::read_dir(dir).map_err(|e| BundleError::io("reading", dir, e))? {
        let e = e.map_err(|e| BundleError::io("reading", dir, e))?;
        let m = e
            .metadata()
            .map_err(|err| BundleError::io("reading", e.path(), err))?;
        total += if m.is_dir() {
            dir_size(&e.path())?
        } else {
            m.len().div_ceil(4096) * 4096
        };
    }
    Ok(total)
}

/// An image file opened read-only: fatfs wants a writable device, and an
/// import must never write to the stick.
struct ReadOnly(std::fs::File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
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
    let fs = fatfs::FileSystem::new(ReadOnly(f), fatfs::FsOptions::new())
        .map_err(|e| invalid(format!("not a readable FAT file system: {e}")))?;
    std::fs::create_dir_all(dest).map_err(|e| BundleError::io("creating", dest, e))?;
    let mut budget = (limits.max_files, limits.max_bytes);
    copy_out(&fs.root_dir(), dest, "", limits, 0, &mut budget, image)?;
    Ok(boot.id.name())
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
    Ok(Boot {
        size: bytes_per_sector * sectors,
        id: VolumeId {
            label,
            serial: format!("{:04X}-{:04X}", serial >> 16, serial & 0xffff),
        },
    })
}

fn copy_out<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    dest: &Path,
    shown: &str,
    limits: &Limits,
    depth: usize,
    budget: &mut (u64, u64),
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
    for entry in dir.iter() {
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
        if budget.0 == 0 {
            return Err(invalid(format!("more than {} files", limits.max_files)));
        }
        budget.0 -= 1;
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
            let len = entry.len();
            if len > budget.1 {
                return Err(invalid(format!(
                    "{here}: the image holds more than {} bytes",
                    limits.max_bytes
                )));
            }
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&to)
                .map_err(|e| BundleError::io("creating", &to, e))?;
            let mut from = entry.to_file();
            let copied = io::copy(&mut (&mut from).take(len), &mut out)
                .map_err(|e| invalid(format!("{here}: unreadable: {e}")))?;
            if copied != len {
                return Err(invalid(format!(
                    "{here}: {copied} of {len} bytes readable (truncated image?)"
                )));
            }
            budget.1 -= len;
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

    fn reason(e: BundleError) -> String {
        match e {
            BundleError::Invalid { reason, .. } => reason,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn images_round_trip_long_names_and_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("tuf/targets/files/{}.manifest.yaml", "ab".repeat(32));
        let img = image(
            dir.path(),
            &[
                ("ferry-bundle.json", b"{}"),
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

    #[test]
    fn labels_are_what_fat_allows() {
        assert_eq!(volume_label("Site 7!"), "SITE7");
        assert_eq!(volume_label("a-very-long-label"), "A-VERY-LONG");
        assert_eq!(volume_label("///"), "FERRY");
    }
}
