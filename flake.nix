{
  description = "ferry: declarative, signed, crash-safe updates for IoT and edge gateways";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      packages = forAll (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "ferry";
          version = "0.1.0";
          src = ./.;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "-p" "ferry" ];
          # The end-to-end tests need tools from integration/run-tests.
          doCheck = false;
          postInstall = ''
            install -Dm644 images/ferry.toml $out/lib/ferry/ferry.toml
            install -Dm644 images/ferry-recover.service $out/lib/systemd/system/ferry-recover.service
            install -Dm644 images/ferry-firmware-check.service $out/lib/systemd/system/ferry-firmware-check.service
          '';
        };
      });
    };
}
