# The NixOS VM test: the nodes of the Debian harness (vm-tests/debian/nodes/), configured through
# services.xdt instead of files, running the same vm-tests/scenario.py. The test driver gives
# node N (alphabetical: central 1, client 2, node 3) the address 192.168.VLAN.N on each of its
# vlans, eth1 first. Run where KVM is: nix build .#vm-test -L (a package, not a check: nix flake
# check only evaluates it).
{ self }:

let
  # A test secret: in the store is fine here, never in a real deployment.
  token = "vm-test-token-3f9a1c";
  tokenFile = "/etc/xdt/token";
in
{
  name = "xdt";

  defaults = {
    imports = [ self.nixosModules.default ];
    environment.etc."xdt/token" = { text = token; mode = "0600"; };
  };

  nodes = {
    # Telemetry from node on vlan 2, the dashboard for client on vlan 3; Prometheus beside
    # central, with the scrape job and alert rules the module adds to it.
    central = { pkgs, ... }: {
      virtualisation.vlans = [ 2 3 ];
      environment.systemPackages = [ pkgs.curl ];
      services.xdt = {
        enable = true;
        central = {
          enable = true;
          http.address = "::";
          telemetry.address = "::";
          openFirewall = true;
          inherit tokenFile;
        };
      };
      # Every 2 s (NixOS's default is a minute), so that the scenario waits seconds for a scrape
      # newer than its traffic and for rules to evaluate.
      services.prometheus = {
        enable = true;
        globalConfig = { scrape_interval = "2s"; evaluation_interval = "2s"; };
      };
    };

    # Sends the traffic the probe sees (vlan 1) and reads the dashboard (vlan 3).
    client = { pkgs, ... }: {
      virtualisation.vlans = [ 1 3 ];
      environment.systemPackages = [ pkgs.curl ];
    };

    # The probe and agent on eth1 (vlan 1, facing the client), central over eth2 (vlan 2).
    node = {
      virtualisation.vlans = [ 1 2 ];
      # Three AF_XDP UMEMs of 8 MiB and the guest's own needs.
      virtualisation.memorySize = 1536;
      services.xdt = {
        enable = true;
        agent = {
          enable = true;
          central = "192.168.2.1:50051";
          inherit tokenFile;
          interfaces.eth1.rules = [
            { label = "counted"; proto = "udp"; dport = 9999; }
            { label = "web"; proto = "tcp"; dport = 8081; action = "steer"; }
          ];
        };
        serviceHealth = {
          enable = true;
          openFirewall = true;
        };
      };
      # The probe's run time per packet (a dashboard panel) is kept only with this on.
      boot.kernel.sysctl."kernel.bpf_stats_enabled" = 1;
      # Test only: SIGUSR2 hangs the agent's main loop, for the watchdog subtest.
      systemd.services."xdt-agent@eth1".environment.XDT_TEST_FAULTS = "hang-on-sigusr2";
    };
  };

  testScript = builtins.readFile ./scenario.py;
}
