;; Opens the path it receives as input inside its first preopened directory
;; (fd 3) and emits up to 4 KiB of the file to "file". Returns the WASI errno
;; when the open fails (e.g. 76, ENOTCAPABLE, for a path leaving the
;; preopen).
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "ferry" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 60) "file")
  (func (export "ferry_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "read") (param $p i32) (param $len i32) (result i32)
    (local $errno i32)
    (local.set $errno (call $path_open (i32.const 3) (i32.const 0) (local.get $p) (local.get $len)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (i32.store (i32.const 0) (i32.const 8192))
    (i32.store (i32.const 4) (i32.const 4096))
    (local.set $errno (call $fd_read (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (local.get $errno) (then (return (local.get $errno))))
    (drop (call $emit (i32.const 60) (i32.const 4) (i32.const 8192) (i32.load (i32.const 8))))
    (i32.const 0))
)
