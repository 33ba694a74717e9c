;; A WASI preview 1 command for `ferry wasm run` tests. argv[1] picks:
;;   args          print every argument, one per line
;;   env           print every environment variable, one per line
;;   cat           copy stdin to stdout
;;   file SRC DST  copy SRC to DST inside the first preopen (fd 3); exits
;;                 with the WASI errno if an open fails
;;   status N      exit with status N
(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 40) "\n")

  ;; Layout: 0..64 scratch (iovec at 0, count at 8, sizes at 16/20, fd at
  ;; 24); argv pointers at 1024, argv bytes at 2048; environ pointers at
  ;; 8192, bytes at 9216; I/O buffer at 16384 (64 KiB).
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done
      (loop $l
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $l)))
    (local.get $n))

  (func $line (param $p i32)
    (call $write (i32.const 1) (local.get $p) (call $strlen (local.get $p)))
    (call $write (i32.const 1) (i32.const 40) (i32.const 1)))

  (func $arg (param $i i32) (result i32)
    (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))

  (func $atoi (param $p i32) (result i32)
    (local $n i32) (local $c i32)
    (block $done
      (loop $l
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $done (i32.lt_u (local.get $c) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $c) (i32.const 57)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (local.get $c) (i32.const 48))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $l)))
    (local.get $n))

  (func $open (param $path i32) (param $oflags i32) (param $rights i64) (result i32)
    (local $errno i32)
    (local.set $errno (call $path_open (i32.const 3) (i32.const 0)
      (local.get $path) (call $strlen (local.get $path))
      (local.get $oflags) (local.get $rights) (i64.const 0) (i32.const 0) (i32.const 24)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (i32.load (i32.const 24)))

  (func (export "_start")
    (local $argc i32) (local $i i32) (local $cmd i32) (local $n i32) (local $fd i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 1024) (i32.const 2048)))
    (local.set $argc (i32.load (i32.const 16)))
    (if (i32.lt_u (local.get $argc) (i32.const 2)) (then (return)))
    (local.set $cmd (i32.load8_u (call $arg (i32.const 1))))
    ;; args
    (if (i32.eq (local.get $cmd) (i32.const 97))
      (then
        (loop $l
          (call $line (call $arg (local.get $i)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (local.get $argc))))
        (return)))
    ;; env
    (if (i32.eq (local.get $cmd) (i32.const 101))
      (then
        (drop (call $environ_sizes_get (i32.const 16) (i32.const 20)))
        (drop (call $environ_get (i32.const 8192) (i32.const 9216)))
        (local.set $n (i32.load (i32.const 16)))
        (block $done
          (loop $l
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (call $line (i32.load (i32.add (i32.const 8192) (i32.shl (local.get $i) (i32.const 2)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $l)))
        (return)))
    ;; cat
    (if (i32.eq (local.get $cmd) (i32.const 99))
      (then
        (block $eof
          (loop $l
            (i32.store (i32.const 0) (i32.const 16384))
            (i32.store (i32.const 4) (i32.const 65536))
            (br_if $eof (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
            (local.set $n (i32.load (i32.const 8)))
            (br_if $eof (i32.eqz (local.get $n)))
            (call $write (i32.const 1) (i32.const 16384) (local.get $n))
            (br $l)))
        (return)))
    ;; file SRC DST
    (if (i32.eq (local.get $cmd) (i32.const 102))
      (then
        (local.set $fd (call $open (call $arg (i32.const 2)) (i32.const 0) (i64.const 2)))
        (i32.store (i32.const 0) (i32.const 16384))
        (i32.store (i32.const 4) (i32.const 65536))
        (drop (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $n (i32.load (i32.const 8)))
        (drop (call $fd_close (local.get $fd)))
        ;; O_CREAT | O_TRUNC
        (local.set $fd (call $open (call $arg (i32.const 3)) (i32.const 9) (i64.const 64)))
        (call $write (local.get $fd) (i32.const 16384) (local.get $n))
        (drop (call $fd_close (local.get $fd)))
        (return)))
    ;; status N
    (if (i32.eq (local.get $cmd) (i32.const 115))
      (then (call $proc_exit (call $atoi (call $arg (i32.const 2))))))
    (call $proc_exit (i32.const 64)))
)
