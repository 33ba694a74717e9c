//! Durable file-system steps: write beside, fsync, rename, fsync the parent.
//! The steps themselves live in `ferry-fs` (shared with the WASM cache).

pub use ferry_fs::{Dir, FileMode, Meta, fsync_dir, parent, remove_durable, write_atomic};
