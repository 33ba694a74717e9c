{
  description = "ferry: declarative, signed, crash-safe updates for IoT and edge gateways";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: {
        ferry = pkgs.callPackage ./nix/package.nix { src = self; };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.ferry;
      });

      # `services.ferry`: typed options rendered to /etc/ferry/ferry.toml.
      nixosModules.default = import ./nix/module.nix { inherit self; };
      nixosModules.ferry = self.nixosModules.default;

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.ferry ];
          packages = with pkgs; [
            cargo rustc clippy rustfmt cargo-nextest cargo-deb
            (python3.withPackages (p: [ p.tuf p.cryptography ]))
            git openssh gnupg mosquitto grub2 ubootTools libubootenv
            dosfstools mtools libfaketime luajit wabt qemu mmdebstrap nix
          ];
        };
      });

      checks = forAll (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.ferry;
        # What services.ferry writes is a configuration ferry accepts
        # (loading validates every key; exit 2 on an invalid one).
        settings = pkgs.runCommand "ferry-settings-check" { } ''
          ${self.packages.${pkgs.stdenv.hostPlatform.system}.ferry}/bin/ferry \
            --config ${(pkgs.formats.toml { }).generate "ferry.toml" (import ./nix/settings.nix {
              lib = pkgs.lib;
              cfg = import ./nix/example.nix;
            })} --state-dir "$TMPDIR/state" status --json > $out
        '';
      });
    };
}
