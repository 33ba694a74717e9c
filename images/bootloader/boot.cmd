# A/B slot selection for U-Boot, boot-counting scheme (the same variables as
# RAUC's documented U-Boot integration). ferry writes BOOT_ORDER and
# BOOT_<S>_LEFT in the U-Boot environment (read like fw_env.config says);
# this script boots the first slot in BOOT_ORDER with attempts left,
# decrementing them first. After a healthy boot `ferry firmware mark-good`
# restores the attempts (firmware.attempts, default 3); a slot that runs out
# is skipped. Build with: mkimage -A arm -T script -C none -d boot.cmd boot.scr

test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"
test -n "${BOOT_A_LEFT}" || setenv BOOT_A_LEFT 3
test -n "${BOOT_B_LEFT}" || setenv BOOT_B_LEFT 3

setenv bootpart
for BOOT_SLOT in "${BOOT_ORDER}"; do
  if test "x${bootpart}" != "x"; then
    # already chosen
  elif test "x${BOOT_SLOT}" = "xA"; then
    if test ${BOOT_A_LEFT} -gt 0; then
      setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1
      setenv bootpart 2
      setenv rauc_slot A
    fi
  elif test "x${BOOT_SLOT}" = "xB"; then
    if test ${BOOT_B_LEFT} -gt 0; then
      setexpr BOOT_B_LEFT ${BOOT_B_LEFT} - 1
      setenv bootpart 3
      setenv rauc_slot B
    fi
  fi
done

if test -n "${bootpart}"; then
  setenv bootargs "${bootargs} root=/dev/mmcblk0p${bootpart} rauc.slot=${rauc_slot}"
  saveenv
else
  echo "No slot with attempts left; resetting the counters"
  setenv BOOT_A_LEFT 3
  setenv BOOT_B_LEFT 3
  setenv BOOT_ORDER
  saveenv
  reset
fi

load mmc 0:${bootpart} ${kernel_addr_r} /boot/zImage
load mmc 0:${bootpart} ${fdt_addr_r} /boot/board.dtb
bootz ${kernel_addr_r} - ${fdt_addr_r}
