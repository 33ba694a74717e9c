# ferry built from this checkout with the committed Cargo.lock.
{ lib, stdenv, rustPlatform, pkg-config, cmake, perl, installShellFiles, src }:

rustPlatform.buildRustPackage {
  pname = "ferry";
  version = (builtins.fromTOML (builtins.readFile ../Cargo.toml)).workspace.package.version;
  inherit src;
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [ "-p" "ferry" "--bin" "ferry" ];
  # aws-lc-sys builds C with cmake; rusqlite bundles SQLite.
  nativeBuildInputs = [ pkg-config cmake perl installShellFiles ];
  # `ferry --version` names the commit (the build sees no .git).
  FERRY_COMMIT = if src ? rev then builtins.substring 0 12 src.rev else "unknown";
  # The test suite needs root, loop devices and Debian tools (integration/run-tests).
  doCheck = false;

  # Man pages and completions come from ferry-assets, built for and run on
  # the build platform (so a cross build never runs the target's binary),
  # describing this build's target.
  postInstall = ''
    FERRY_TARGET=${stdenv.hostPlatform.rust.rustcTarget} \
      cargo run --offline -p ferry-assets --target ${stdenv.buildPlatform.rust.rustcTarget} -- --out assets
    installManPage assets/man/*.1
    installShellCompletion --bash --name ferry assets/completions/ferry.bash \
      --zsh assets/completions/_ferry --fish assets/completions/ferry.fish
    install -Dm644 -t $out/lib/systemd/system images/*.service
    install -Dm644 -t $out/lib/udev/rules.d images/90-ferry-usb.rules
    install -Dm644 -t $out/lib/tmpfiles.d images/tmpfiles.d/ferry.conf
    install -Dm644 images/ferry.toml $out/lib/ferry/ferry.toml
    install -Dm644 -t $out/share/ferry/bootloader images/bootloader/*
    substituteInPlace $out/lib/systemd/system/*.service --replace-quiet /usr/bin/ferry $out/bin/ferry
  '';

  meta = {
    description = "Declarative, signed, crash-safe update agent for IoT and edge gateways";
    license = lib.licenses.asl20;
    mainProgram = "ferry";
    platforms = lib.platforms.linux;
  };
}
