# NixOS module: services.ferry. Typed options for the common keys of
# ferry.toml (docs/configuration.md); anything else goes in extraSettings.
{ self }:
{ config, lib, pkgs, ... }:

let
  cfg = config.services.ferry;
  inherit (lib) mkOption mkEnableOption mkIf types;
  toml = pkgs.formats.toml { };
  configFile = toml.generate "ferry.toml" (import ./settings.nix { inherit lib cfg; });
  nullOr = t: types.nullOr t;
in
{
  options.services.ferry = {
    enable = mkEnableOption "the ferry update agent";

    package = mkOption {
      type = types.package;
      default = self.packages.${pkgs.stdenv.hostPlatform.system}.ferry;
      description = "The ferry package.";
    };

    stateDir = mkOption {
      type = types.path;
      default = "/var/lib/ferry";
      description = "Database, store and generations (state_dir).";
    };

    filesRoot = mkOption {
      type = types.path;
      default = "/";
      description = "Where `file` resources are written (files.root).";
    };

    pollInterval = mkOption {
      type = types.str;
      default = "5m";
      example = "30s";
      description = "Time between polls (agent.poll_interval).";
    };

    healthTimeout = mkOption {
      type = nullOr types.str;
      default = null;
      description = "How long health checks may take after a switch (agent.health_timeout).";
    };

    source = {
      kind = mkOption {
        type = types.enum [ "tuf" "git" "dir" ];
        description = "Where desired state comes from (source.kind).";
      };
      tuf = {
        metadataUrl = mkOption { type = nullOr types.str; default = null; description = "source.tuf.metadata_url"; };
        targetsUrl = mkOption { type = nullOr types.str; default = null; description = "source.tuf.targets_url"; };
        root = mkOption { type = types.path; default = "/etc/ferry/trust/root.json"; description = "The baked TUF root (source.tuf.root)."; };
        manifest = mkOption { type = nullOr types.str; default = null; description = "source.tuf.manifest"; };
      };
      git = {
        url = mkOption { type = nullOr types.str; default = null; description = "source.git.url"; };
        branch = mkOption { type = types.str; default = "main"; description = "source.git.branch"; };
        trustDir = mkOption { type = nullOr types.path; default = null; description = "source.git.trust_dir"; };
        manifest = mkOption { type = nullOr types.str; default = null; description = "source.git.manifest"; };
      };
      dir = {
        path = mkOption { type = nullOr types.path; default = null; description = "source.dir.path (unsigned; development only)."; };
      };
    };

    healthChecks = mkOption {
      type = types.listOf (types.submodule {
        options = {
          command = mkOption { type = nullOr (types.listOf types.str); default = null; };
          unit = mkOption { type = nullOr types.str; default = null; };
          url = mkOption { type = nullOr types.str; default = null; };
        };
      });
      default = [ ];
      description = "[[health.check]]: each with exactly one of command, unit, url.";
    };

    sigstore.require = mkOption {
      type = types.listOf (types.submodule {
        options = {
          kind = mkOption { type = nullOr (types.enum [ "file" "ruleset" "wasm" "firmware" ]); default = null; };
          path = mkOption { type = nullOr types.str; default = null; };
          identity = mkOption { type = nullOr types.str; default = null; };
          identity_regex = mkOption { type = nullOr types.str; default = null; };
          issuer = mkOption { type = nullOr types.str; default = null; };
          key = mkOption { type = nullOr types.path; default = null; };
        };
      });
      default = [ ];
      description = "[[sigstore.require]] rules (docs/sigstore.md).";
    };

    extraSettings = mkOption {
      type = toml.type;
      default = { };
      description = "Further ferry.toml keys, merged over the typed options.";
    };
  };

  config = mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    environment.etc."ferry/ferry.toml".source = configFile;
    systemd.packages = [ cfg.package ];
    systemd.tmpfiles.packages = [ cfg.package ];
    services.udev.packages = [ cfg.package ];
    systemd.services.ferry = {
      wantedBy = [ "multi-user.target" ];
      restartTriggers = [ configFile ];
      overrideStrategy = "asDropin";
    };
    systemd.services.ferry-recover.wantedBy = [ "multi-user.target" ];
    systemd.services.ferry-firmware-check.wantedBy = [ "multi-user.target" ];
  };
}
