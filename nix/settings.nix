# services.ferry options → the attribute set written as ferry.toml
# (docs/configuration.md). Only `lib` functions that are plain Nix, so the
# mapping can be evaluated without nixpkgs (integration/nix/check).
{ lib, cfg }:

let
  nonNull = lib.filterAttrs (_: v: v != null);
  source =
    if cfg.source.kind == "tuf" then {
      kind = "tuf";
      tuf = nonNull {
        metadata_url = cfg.source.tuf.metadataUrl;
        targets_url = cfg.source.tuf.targetsUrl;
        root = toString cfg.source.tuf.root;
        manifest = cfg.source.tuf.manifest;
      };
    } else if cfg.source.kind == "git" then {
      kind = "git";
      git = nonNull {
        url = cfg.source.git.url;
        branch = cfg.source.git.branch;
        trust_dir = if cfg.source.git.trustDir == null then null else toString cfg.source.git.trustDir;
        manifest = cfg.source.git.manifest;
      };
    } else {
      kind = "dir";
      dir = { path = toString cfg.source.dir.path; insecure = true; };
    };
in
lib.recursiveUpdate
  (nonNull {
    state_dir = toString cfg.stateDir;
    inherit source;
    files = { root = toString cfg.filesRoot; };
    agent = nonNull {
      poll_interval = cfg.pollInterval;
      health_timeout = cfg.healthTimeout;
    };
    health = { check = map (c: nonNull { command = c.command or null; unit = c.unit or null; url = c.url or null; }) cfg.healthChecks; };
    sigstore = { require = map nonNull cfg.sigstore.require; };
  })
  cfg.extraSettings
