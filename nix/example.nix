# An example services.ferry configuration (the option values, as the module
# passes them to settings.nix); evaluated by the checks.
{
  stateDir = "/var/lib/ferry";
  filesRoot = "/";
  pollInterval = "5m";
  healthTimeout = "2m";
  source = {
    kind = "tuf";
    tuf = {
      metadataUrl = "https://updates.example.com/metadata/";
      targetsUrl = "https://updates.example.com/targets/";
      root = "/etc/ferry/trust/root.json";
      manifest = null;
    };
    git = { url = null; branch = "main"; trustDir = null; manifest = null; };
    dir = { path = null; };
  };
  healthChecks = [ { command = [ "systemctl" "is-active" "mosquitto" ]; } ];
  sigstore.require = [
    {
      kind = "firmware";
      path = null;
      identity = "https://github.com/acme/gateway-os/.github/workflows/release.yml@refs/heads/main";
      identity_regex = null;
      issuer = "https://token.actions.githubusercontent.com";
      key = null;
    }
  ];
  extraSettings = { agent = { jitter = "30s"; }; };
}
