# Evaluates the services.xdt module with nixpkgs' lib alone (no nixpkgs, no NixOS): the NixOS
# options the module sets are declared here as stand-ins, and pkgs is a stand-in too. Each case
# is a configuration and what it must produce; the result is a list of failures (empty: all
# pass). Run by crates/xdt-cli/tests/nix.rs:
#   nix-instantiate --eval --strict --json nixos-modules/tests/eval.nix --arg lib 'import LIB/lib'
{ lib }:

let
  inherit (lib) mkOption types;

  storePath = name: "/nix/store/0000000000000000000000000000000x-${name}";
  stubPackage = {
    type = "derivation";
    name = "xdt-0.1.0";
    pname = "xdt";
    version = "0.1.0";
    outPath = storePath "xdt-0.1.0";
    meta = { };
  };
  # What the module uses of pkgs: its package, runCommand and the platforms.
  pkgs = {
    xdt = stubPackage;
    runCommand = name: env: script: env // {
      type = "derivation";
      inherit name script;
      outPath = storePath name;
    };
    stdenv = {
      buildPlatform.canExecute = _: true;
      hostPlatform = { };
    };
  };

  # The NixOS options the module reads or sets, with the types NixOS gives them.
  nixosStandIns = {
    options = {
      assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            text = mkOption { type = types.nullOr types.lines; default = null; };
            source = mkOption { type = types.nullOr types.unspecified; default = null; };
            mode = mkOption { type = types.str; default = "symlink"; };
          };
        });
        default = { };
      };
      systemd.packages = mkOption { type = types.listOf types.package; default = [ ]; };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            overrideStrategy = mkOption {
              type = types.enum [ "asDropinIfExists" "asDropin" ];
              default = "asDropinIfExists";
            };
            wantedBy = mkOption { type = types.listOf types.str; default = [ ]; };
            environment = mkOption { type = types.attrsOf types.str; default = { }; };
            serviceConfig = mkOption { type = types.attrsOf types.unspecified; default = { }; };
            restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
            reloadTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
          };
        });
        default = { };
      };
      networking.hostName = mkOption { type = types.str; default = "nixos"; };
      networking.firewall = {
        enable = mkOption { type = types.bool; default = true; };
        backend = mkOption { type = types.enum [ "iptables" "nftables" ]; default = "iptables"; };
        checkReversePath = mkOption {
          type = types.either types.bool (types.enum [ "strict" "loose" ]);
          default = true;
        };
        allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
        extraCommands = mkOption { type = types.lines; default = ""; };
        extraReversePathFilterRules = mkOption { type = types.lines; default = ""; };
      };
      boot.kernelPackages = mkOption {
        type = types.raw;
        default = { kernel.version = "6.12.41"; };
      };
    };
  };

  evaluateWith = module: configuration:
    (lib.evalModules {
      modules = [ nixosStandIns module configuration ];
      specialArgs = { inherit pkgs; };
    }).config;
  evaluate = evaluateWith ../xdt.nix;

  # The flake's outputs, with nixpkgs' lib for its nixpkgs input: what can be looked at without
  # instantiating nixpkgs (its attribute names, and the module as the flake exports it).
  flake = import ../../flake.nix;
  outputs = flake.outputs { self = outputs; nixpkgs = { inherit lib; }; };

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  token = "/run/keys/xdt-token";
  node = {
    networking.hostName = "node";
    services.xdt = {
      enable = true;
      agent = {
        enable = true;
        central = "192.168.2.1:50051";
        tokenFile = token;
        interfaces.eth1.rules = [
          { label = "counted"; proto = "udp"; dport = 9999; }
          { label = "web"; proto = "tcp"; dport = 8081; action = "steer"; }
          { label = "blocked"; src = "192.0.2.0/24"; priority = 1; action = "drop"; }
        ];
      };
    };
  };
  withAgent = extra: lib.recursiveUpdate node { services.xdt.agent = extra; };
  withKernel = version: node // { boot.kernelPackages.kernel.version = version; };

  # Each check: [ description, got, expected ].
  cases = {
    "an agent node" =
      let c = evaluate node; in [
        [ "no failed assertion" (failedAssertions c) [ ] ]
        [ "the package's units" c.systemd.packages [ stubPackage ] ]
        [ "the CLI on PATH" c.environment.systemPackages [ stubPackage ] ]
        [
          "agent.conf"
          c.environment.etc."xdt/agent.conf".text
          ''
            # xdt-agent: written by the services.xdt NixOS module.
            XDT_AGENT_ID=node
            XDT_CENTRAL=192.168.2.1:50051
          ''
        ]
        [
          "the rules file"
          c.environment.etc."xdt/rules/eth1.rules".source.text
          ''
            # Rules of eth1: written by the services.xdt NixOS module (docs/rules.md).
            counted proto udp dport 9999
            web proto tcp dport 8081 action steer
            blocked src 192.0.2.0/24 priority 1 action drop
          ''
        ]
        [
          "the rules are checked by xdt at build time"
          (lib.hasInfix "${stubPackage}/bin/xdt rules check" c.environment.etc."xdt/rules/eth1.rules".source.script)
          true
        ]
        [ "the rules file is a writable copy" c.environment.etc."xdt/rules/eth1.rules".mode "0644" ]
        [ "attach is a drop-in" c.systemd.services."xdt-attach@eth1".overrideStrategy "asDropin" ]
        [ "attach starts at boot" c.systemd.services."xdt-attach@eth1".wantedBy [ "multi-user.target" ] ]
        [ "attach mode" c.systemd.services."xdt-attach@eth1".environment.XDT_ATTACH_MODE "auto" ]
        [
          "new rules reload the attach unit"
          c.systemd.services."xdt-attach@eth1".reloadTriggers
          [ c.environment.etc."xdt/rules/eth1.rules".source ]
        ]
        [ "agent is a drop-in" c.systemd.services."xdt-agent@eth1".overrideStrategy "asDropin" ]
        [ "agent starts at boot" c.systemd.services."xdt-agent@eth1".wantedBy [ "multi-user.target" ] ]
        [
          "the token credential is replaced"
          c.systemd.services."xdt-agent@eth1".serviceConfig.LoadCredential
          [ "" "token:${token}" ]
        ]
        [
          "a new agent.conf restarts the agent"
          (lib.elem c.environment.etc."xdt/agent.conf".text c.systemd.services."xdt-agent@eth1".restartTriggers)
          true
        ]
        [
          "steered packets pass the reverse-path filter"
          c.networking.firewall.extraCommands
          "ip46tables -t mangle -I nixos-fw-rpfilter -i xdt+ -j RETURN\n"
        ]
        [ "no central" (c.systemd.services ? xdt-central) false ]
        [ "no port opened" c.networking.firewall.allowedTCPPorts [ ] ]
      ];

    "central with a firewall and OTLP" =
      let
        c = evaluate {
          services.xdt = {
            enable = true;
            central = {
              enable = true;
              tokenFile = token;
              http.address = "::";
              openFirewall = true;
              otlpEndpoint = "http://127.0.0.1:4318";
              settings.XDT_RECENT_EVENTS = 1024;
            };
          };
        };
      in
      [
        [ "no failed assertion" (failedAssertions c) [ ] ]
        [
          "central.conf"
          c.environment.etc."xdt/central.conf".text
          ''
            # xdt-central: written by the services.xdt NixOS module.
            XDT_HTTP_LISTEN=[::]:8080
            XDT_OTLP_ENDPOINT=http://127.0.0.1:4318
            XDT_RECENT_EVENTS=1024
            XDT_TELEMETRY_LISTEN=0.0.0.0:50051
          ''
        ]
        [ "starts at boot" c.systemd.services.xdt-central.wantedBy [ "multi-user.target" ] ]
        [ "token" c.systemd.services.xdt-central.serviceConfig.LoadCredential [ "" "token:${token}" ] ]
        [ "ports opened" (lib.sort lib.lessThan c.networking.firewall.allowedTCPPorts) [ 8080 50051 ] ]
        [ "no agent units" (lib.filter (lib.hasPrefix "xdt-agent@") (lib.attrNames c.systemd.services)) [ ] ]
      ];

    "the sample service" =
      let
        c = evaluate {
          services.xdt = {
            enable = true;
            serviceHealth = { enable = true; openFirewall = true; listen.port = 9090; };
          };
        };
      in
      [
        [ "no failed assertion" (failedAssertions c) [ ] ]
        [ "listen" c.environment.etc."xdt/service-health.env".text "XDT_SERVICE_LISTEN=[::]:9090\n" ]
        [ "port opened" c.networking.firewall.allowedTCPPorts [ 9090 ] ]
        [ "starts at boot" c.systemd.services.xdt-service-health.wantedBy [ "multi-user.target" ] ]
      ];

    "an interface name with a dash is escaped for the template" =
      let
        c = evaluate (lib.recursiveUpdate node {
          services.xdt.agent.interfaces = { "br-lan".mode = "generic"; };
        });
      in
      [
        [ "no failed assertion" (failedAssertions c) [ ] ]
        [ "escaped instance" (c.systemd.services ? "xdt-agent@br\\x2dlan") true ]
        [ "its mode" c.systemd.services."xdt-attach@br\\x2dlan".environment.XDT_ATTACH_MODE "generic" ]
        [ "its rules file keeps the name" (c.environment.etc ? "xdt/rules/br-lan.rules") true ]
      ];

    "settings, steering off, nftables, no host name" =
      let
        c = evaluate (lib.recursiveUpdate (withAgent { settings = { XDT_NO_STEER = true; XDT_INTERVAL = 5; XDT_LOG_LEVEL = null; }; }) {
          networking.hostName = "";
          networking.firewall.backend = "nftables";
        });
      in
      [
        [
          "agent.conf"
          c.environment.etc."xdt/agent.conf".text
          ''
            # xdt-agent: written by the services.xdt NixOS module.
            XDT_CENTRAL=192.168.2.1:50051
            XDT_INTERVAL=5
            XDT_NO_STEER=true
          ''
        ]
        [ "no reverse-path exemption without steering" c.networking.firewall.extraReversePathFilterRules "" ]
      ];

    "nftables gets its own exemption" =
      let c = evaluate (node // { networking.firewall.backend = "nftables"; }); in [
        [ "no iptables commands" c.networking.firewall.extraCommands "" ]
        [
          "nftables rule"
          (lib.hasInfix ''iifname "xdt*" accept'' c.networking.firewall.extraReversePathFilterRules)
          true
        ]
      ];

    "the flake" =
      let
        c = evaluateWith outputs.nixosModules.default (lib.recursiveUpdate node {
          services.xdt.package = stubPackage;
        });
      in
      [
        [
          "its outputs"
          (lib.attrNames outputs)
          [ "apps" "checks" "devShells" "formatter" "nixosModules" "overlays" "packages" ]
        ]
        [ "its systems" (lib.attrNames outputs.packages) [ "aarch64-linux" "x86_64-linux" ] ]
        [ "nixpkgs is its one input" (lib.attrNames flake.inputs) [ "nixpkgs" ] ]
        [ "an overlay function" (lib.isFunction outputs.overlays.default) true ]
        [ "its module sets the same units up" (failedAssertions c) [ ] ]
        [ "with the package given" c.systemd.packages [ stubPackage ] ]
      ];

    "refusals" = [
      [
        "an agent without an interface"
        (failedAssertions (evaluate (lib.recursiveUpdate node { services.xdt.agent.interfaces = lib.mkForce { }; })))
        [
          ''
            services.xdt.agent.enable is set without an interface: name at least one in
            services.xdt.agent.interfaces (for example `interfaces.eth0.rules = [ ];`).
          ''
        ]
      ]
      [
        "a missing token file"
        (map (lib.hasPrefix "services.xdt.agent.tokenFile is not set")
          (failedAssertions (evaluate (withAgent { tokenFile = null; }))))
        [ true ]
      ]
      [
        "a relative token file"
        (failedAssertions (evaluate (withAgent { tokenFile = "token"; })))
        [ "services.xdt.agent.tokenFile must be an absolute path, not \"token\"." ]
      ]
      [
        "central without a token file"
        (map (lib.hasPrefix "services.xdt.central.tokenFile is not set")
          (failedAssertions (evaluate { services.xdt = { enable = true; central.enable = true; }; })))
        [ true ]
      ]
      [
        "a kernel older than 5.9"
        (map (lib.hasPrefix "xdt needs Linux 5.9 or later") (failedAssertions (evaluate (withKernel "5.4.280"))))
        [ true false ]
      ]
      [
        "a kernel older than 5.19 with capabilities dropped"
        (map (lib.hasPrefix "Linux 5.15.160 is too old for the capability-less agent")
          (failedAssertions (evaluate (withKernel "5.15.160"))))
        [ true ]
      ]
      [
        "5.15 keeping capabilities"
        (failedAssertions (evaluate (lib.recursiveUpdate (withKernel "5.15.160") {
          services.xdt.agent.settings.XDT_KEEP_CAPABILITIES = true;
        })))
        [ ]
      ]
      [
        "settings the module owns"
        (map (lib.hasPrefix "services.xdt.agent.settings sets XDT_INTERFACE")
          (failedAssertions (evaluate (withAgent { settings.XDT_INTERFACE = "eth0"; }))))
        [ true ]
      ]
      [
        "a bad interface name"
        (map (lib.hasInfix "\"eth0/1\"")
          (failedAssertions (evaluate (withAgent { interfaces."eth0/1" = { }; }))))
        [ true ]
      ]
      [
        "no role"
        (map (lib.hasPrefix "services.xdt.enable is set but no role is")
          (failedAssertions (evaluate { services.xdt.enable = true; })))
        [ true ]
      ]
      [
        "a bad label is a type error"
        (builtins.tryEval (evaluate (withAgent {
          interfaces.eth1.rules = [{ label = "has space"; }];
        })).environment.etc."xdt/rules/eth1.rules".source.text).success
        false
      ]
      [
        "a bad action is a type error"
        (builtins.tryEval (evaluate (withAgent {
          interfaces.eth1.rules = [{ label = "x"; action = "sample 0"; }];
        })).environment.etc."xdt/rules/eth1.rules".source.text).success
        false
      ]
      [
        "a multi-line setting is a type error"
        (builtins.tryEval (evaluate (withAgent { settings.XDT_CENTRAL = "a\nb"; })).environment.etc."xdt/agent.conf".text).success
        false
      ]
      [
        "nothing is set up when disabled"
        (let c = evaluate { services.xdt.agent.enable = true; }; in [ c.systemd.packages c.systemd.services c.environment.etc ])
        [ [ ] { } { } ]
      ]
    ];
  };

  failures = lib.concatLists (lib.mapAttrsToList
    (name: checks:
      map (check: "${name}: ${lib.elemAt check 0}: got ${builtins.toJSON (lib.elemAt check 1)}, expected ${builtins.toJSON (lib.elemAt check 2)}")
        (lib.filter (check: lib.elemAt check 1 != lib.elemAt check 2) checks))
    cases);
in
{
  checks = lib.length (lib.concatLists (lib.attrValues cases));
  inherit failures;
}
