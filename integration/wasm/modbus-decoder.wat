;; A Modbus-style register decoder for ferry (reactor module).
;;
;; Input: a "read holding registers" response: unit id (u8), function code
;; 0x03, byte count (u8), then big-endian 16-bit registers:
;;   r0..r1  sequence number (u32)
;;   r2      temperature, tenths of a degree Celsius (i16)
;;   r3      relative humidity, tenths of a percent (u16)
;;   r4      status bits (bit 0: alarm)
;; Output (ferry::emit to "modbus/decoded"), one JSON object per input:
;;   {"v":1,"unit":7,"seq":42,"temperature_c":-3.5,"humidity_pct":41.2,"alarm":false}
;; Returns 1 (too short), 2 (not function 3) or 3 (too few registers) for
;; inputs it cannot decode.
(module
  (import "ferry" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $version i32 (i32.const 1))
  (data (i32.const 4096) "modbus/decoded")
  (data (i32.const 4200) "{\"v\":")
  (data (i32.const 4210) ",\"unit\":")
  (data (i32.const 4220) ",\"seq\":")
  (data (i32.const 4230) ",\"temperature_c\":")
  (data (i32.const 4250) ",\"humidity_pct\":")
  (data (i32.const 4270) ",\"alarm\":")
  (data (i32.const 4280) "true}")
  (data (i32.const 4290) "false}")

  ;; Input goes to 0..1024.
  (func (export "ferry_alloc") (param $len i32) (result i32)
    (if (i32.gt_u (local.get $len) (i32.const 1024)) (then (return (i32.const -1))))
    (i32.const 0))

  (func (export "ferry_health") (result i32) (i32.const 0))

  (func $u16 (param $p i32) (result i32)
    (i32.or
      (i32.shl (i32.load8_u (local.get $p)) (i32.const 8))
      (i32.load8_u offset=1 (local.get $p))))

  (func $str (param $out i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $out) (local.get $src) (local.get $len))
    (i32.add (local.get $out) (local.get $len)))

  ;; Unsigned decimal.
  (func $uint (param $out i32) (param $n i32) (result i32)
    (local $len i32)
    (loop $digits
      (i32.store8 (i32.add (i32.const 3000) (local.get $len))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (local.get $n)))
    (loop $copy
      (local.set $len (i32.sub (local.get $len) (i32.const 1)))
      (i32.store8 (local.get $out) (i32.load8_u (i32.add (i32.const 3000) (local.get $len))))
      (local.set $out (i32.add (local.get $out) (i32.const 1)))
      (br_if $copy (local.get $len)))
    (local.get $out))

  ;; Signed fixed point with one decimal.
  (func $tenths (param $out i32) (param $n i32) (result i32)
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then
        (i32.store8 (local.get $out) (i32.const 45))
        (local.set $out (i32.add (local.get $out) (i32.const 1)))
        (local.set $n (i32.sub (i32.const 0) (local.get $n)))))
    (local.set $out (call $uint (local.get $out) (i32.div_u (local.get $n) (i32.const 10))))
    (i32.store8 (local.get $out) (i32.const 46))
    (i32.store8 offset=1 (local.get $out)
      (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
    (i32.add (local.get $out) (i32.const 2)))

  (func (export "decode") (param $p i32) (param $len i32) (result i32)
    (local $o i32)
    (if (i32.lt_u (local.get $len) (i32.const 13)) (then (return (i32.const 1))))
    (if (i32.ne (i32.load8_u offset=1 (local.get $p)) (i32.const 3)) (then (return (i32.const 2))))
    (if (i32.lt_u (i32.load8_u offset=2 (local.get $p)) (i32.const 10)) (then (return (i32.const 3))))
    (local.set $o (call $str (i32.const 1024) (i32.const 4200) (i32.const 5)))
    (local.set $o (call $uint (local.get $o) (global.get $version)))
    (local.set $o (call $str (local.get $o) (i32.const 4210) (i32.const 8)))
    (local.set $o (call $uint (local.get $o) (i32.load8_u (local.get $p))))
    (local.set $o (call $str (local.get $o) (i32.const 4220) (i32.const 7)))
    (local.set $o (call $uint (local.get $o)
      (i32.or
        (i32.shl (call $u16 (i32.add (local.get $p) (i32.const 3))) (i32.const 16))
        (call $u16 (i32.add (local.get $p) (i32.const 5))))))
    (local.set $o (call $str (local.get $o) (i32.const 4230) (i32.const 17)))
    (local.set $o (call $tenths (local.get $o)
      (i32.shr_s (i32.shl (call $u16 (i32.add (local.get $p) (i32.const 7))) (i32.const 16)) (i32.const 16))))
    (local.set $o (call $str (local.get $o) (i32.const 4250) (i32.const 16)))
    (local.set $o (call $tenths (local.get $o) (call $u16 (i32.add (local.get $p) (i32.const 9)))))
    (local.set $o (call $str (local.get $o) (i32.const 4270) (i32.const 9)))
    (if (i32.and (call $u16 (i32.add (local.get $p) (i32.const 11))) (i32.const 1))
      (then (local.set $o (call $str (local.get $o) (i32.const 4280) (i32.const 5))))
      (else (local.set $o (call $str (local.get $o) (i32.const 4290) (i32.const 6)))))
    (drop (call $emit (i32.const 4096) (i32.const 14) (i32.const 1024)
      (i32.sub (local.get $o) (i32.const 1024))))
    (i32.const 0))
)
