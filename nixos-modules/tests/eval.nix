# Evaluates the services.xdt module with nixpkgs' lib alone (no nixpkgs, no NixOS): the NixOS
# options the module sets are declared here as stand-ins, and pkgs is a stand-in too. Each case
# is a configuration and what it must produce; the result is a list of failures (empty: all
# pass). Run by crates/xdt-system-tests/tests/nix.rs:
#   nix-instantiate --eval --strict --json nixos-modules/tests/eval.nix --arg lib 'import LIB/lib'
{ lib }:

let
  # nixpkgs' lib.fileset reads file types with builtins.readFileType (Nix 2.14); Debian's Nix 2.8,
  # which runs this test, gets them from the directory listing, as older lib did.
  lib' = if builtins ? readFileType then lib else
  lib.extend (_: prev: {
    filesystem = prev.filesystem // {
      pathType = path: (builtins.readDir (dirOf path)).${baseNameOf path};
    };
  });
in
let
  lib = lib';
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
  # What the module uses of pkgs: its package, runCommand and the platforms (and curl, which the
  # VM test's client installs).
  pkgs = {
    xdt = stubPackage;
    curl = stubPackage // { name = "curl"; outPath = storePath "curl"; };
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
            unitConfig = mkOption { type = types.attrsOf types.unspecified; default = { }; };
            restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
            reloadTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
          };
        });
        default = { };
      };
      networking.hostName = mkOption { type = types.str; default = "nixos"; };
      networking.firewall = {
        enable = mkOption { type = types.bool; default = true; };
        backend = mkOption { type = types.enum [ "iptables" "nftables" "firewalld" ]; default = "iptables"; };
        checkReversePath = mkOption {
          type = types.either types.bool (types.enum [ "strict" "loose" ]);
          default = true;
        };
        allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
        extraCommands = mkOption { type = types.lines; default = ""; };
        extraReversePathFilterRules = mkOption { type = types.lines; default = ""; };
        filterForward = mkOption { type = types.bool; default = false; };
      };
      services.firewalld.enable = mkOption { type = types.bool; default = false; };
      services.firewalld.settings = mkOption {
        type = types.submodule {
          freeformType = types.attrsOf (types.oneOf [ types.bool types.str ]);
          options.IPv6_rpfilter = mkOption {
            type = types.enum [ "strict" "loose" "strict-forward" "loose-forward" "no" ];
            default = "strict";
          };
        };
        default = { };
      };
      # services.prometheus and services.grafana, as far as the module sets them.
      services.prometheus.enable = mkOption { type = types.bool; default = false; };
      services.prometheus.scrapeConfigs = mkOption {
        type = types.listOf (types.submodule {
          options.job_name = mkOption { type = types.str; };
          options.static_configs = mkOption {
            type = types.listOf (types.submodule {
              options.targets = mkOption { type = types.listOf types.str; default = [ ]; };
            });
            default = [ ];
          };
        });
        default = [ ];
      };
      services.prometheus.ruleFiles = mkOption { type = types.listOf types.path; default = [ ]; };
      services.prometheus.globalConfig = mkOption {
        type = types.submodule {
          options.scrape_interval = mkOption { type = types.nullOr types.str; default = null; };
          options.evaluation_interval = mkOption { type = types.nullOr types.str; default = null; };
        };
        default = { };
      };
      services.grafana.enable = mkOption { type = types.bool; default = false; };
      services.grafana.provision.enable = mkOption { type = types.bool; default = false; };
      services.grafana.provision.dashboards.settings.providers = mkOption {
        type = types.listOf (types.submodule {
          options.name = mkOption { type = types.str; default = "default"; };
          options.options.path = mkOption { type = types.path; };
        });
        default = [ ];
      };
      boot.kernel.sysctl = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.bool types.str types.int ]));
        default = { };
      };
      # What the NixOS test driver adds (vm-tests/nixos.nix).
      virtualisation.vlans = mkOption { type = types.listOf types.ints.unsigned; default = [ ]; };
      virtualisation.memorySize = mkOption { type = types.ints.positive; default = 1024; };
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

  # A stand-in for nixpkgs, for the flake's outputs: nixpkgs' lib, and packages that are real
  # derivations (`derivation`; nothing is built, the test computes their paths) with the
  # attributes the flake uses. Its importCargoLock reads the lock file during evaluation as
  # nixpkgs' does, so reading one out of a derivation's output (import from derivation) cannot
  # pass: it names that case, and anything else that needs a build fails the read-only evaluation.
  standInPkgs = system: lib.makeExtensible (final:
    let
      derivationValue = v: lib.isDerivation v || lib.isString v || lib.isPath v || lib.isBool v
        || lib.isInt v || v == null || (lib.isList v && lib.all derivationValue v);
      mkDerivation = args:
        let
          name = args.name or "${args.pname}-${args.version}";
          flat = removeAttrs args [ "name" "env" "meta" "passthru" ] // args.env or { };
          drv = derivation ({ inherit name system; builder = "/bin/sh"; }
            // lib.filterAttrs (_: derivationValue) flat);
        in
        args // args.passthru or { } // drv // {
          meta = args.meta or { };
          overrideAttrs = f: mkDerivation (args // f args);
        };
      stub = name: mkDerivation { inherit name; };
    in
    {
      inherit lib;
      callPackage = fn: args: lib.callPackageWith final fn args;
      stdenv = {
        hostPlatform.system = system;
        buildPlatform.canExecute = _: true;
        inherit mkDerivation;
      };
      rustPlatform = {
        importCargoLock = { lockFile, ... }:
          assert lib.assertMsg (!builtins.hasContext (toString lockFile))
            "importCargoLock reads ${toString lockFile}, which a derivation builds: import from derivation";
          mkDerivation {
            name = "cargo-vendor-dir";
            crates = toString (lib.length (builtins.fromTOML (builtins.readFile lockFile)).package);
            passthru = { inherit lockFile; };
          };
        buildRustPackage = args: mkDerivation (removeAttrs args [ "cargoLock" ] // {
          nativeBuildInputs = args.nativeBuildInputs or [ ]
          ++ [ final.rustPlatform.cargoSetupHook final.cargo final.rustc ];
          cargoDeps = final.rustPlatform.importCargoLock args.cargoLock;
        });
        cargoSetupHook = stub "cargo-setup-hook.sh";
        rustLibSrc = stub "rust-lib-src";
      };
      runCommand = name: env: buildCommand: mkDerivation (env // { inherit name buildCommand; });
      writeShellApplication = { name, text, runtimeInputs ? [ ] }:
        mkDerivation { inherit name text runtimeInputs; meta.mainProgram = name; };
      mkShell = args: mkDerivation (args // { name = "nix-shell"; });
      python3.withPackages = f:
        mkDerivation { name = "python3-env"; packages = f { opentelemetry-proto = stub "opentelemetry-proto"; }; };
      testers.runNixOSTest = test: mkDerivation { name = "vm-test-run-${test.name}"; inherit (test) testScript; };
      dockerTools.buildLayeredImage = { name, config ? { }, ... }@args:
        mkDerivation (removeAttrs args [ "config" ] // { name = "${name}.tar.gz"; passthru.config = config; });
    } // lib.genAttrs [
      "rustc"
      "cargo"
      "bpf-linker"
      "clippy"
      "rustfmt"
      "rust-analyzer"
      "bpftool"
      "coreutils"
      "iproute2"
      "iputils"
      "util-linux"
      "curl"
      "prometheus"
      "systemd"
      "nixpkgs-fmt"
      "busybox"
    ]
      stub);

  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    nixpkgs = {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] standInPkgs;
    };
  };
  # Every derivation the flake outputs, for both systems.
  flakeDerivations = lib.concatMap
    (system: lib.attrValues outputs.packages.${system} ++ lib.attrValues outputs.checks.${system}
      ++ [ outputs.devShells.${system}.default outputs.formatter.${system} ])
    (lib.attrNames outputs.packages);
  probe = outputs.packages.x86_64-linux.xdt-probe;
  vmTest = import ../../vm-tests/nixos.nix { self = outputs; };
  # A node of the NixOS VM test, configured as the test driver does (its defaults, the node, the
  # host name).
  vmNode = name: (lib.evalModules {
    modules = [
      nixosStandIns
      vmTest.defaults
      vmTest.nodes.${name}
      { networking.hostName = name; services.xdt.package = stubPackage; }
    ];
    specialArgs = { inherit pkgs; };
  }).config;

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
        [ "flows off by default" c.systemd.services."xdt-attach@eth1".environment.XDT_FLOWS "0" ]
        [ "no IPFIX by default" (lib.hasInfix "XDT_IPFIX" c.environment.etc."xdt/agent.conf".text) false ]
        [
          "attach.env cannot override the mode"
          c.systemd.services."xdt-attach@eth1".serviceConfig.EnvironmentFile or null
          [ "" ]
        ]
        [
          "new rules reload the attach unit"
          c.systemd.services."xdt-attach@eth1".reloadTriggers
          [ c.environment.etc."xdt/rules/eth1.rules".source ]
        ]
        [ "agent is a drop-in" c.systemd.services."xdt-agent@eth1".overrideStrategy "asDropin" ]
        [ "agent starts at boot" c.systemd.services."xdt-agent@eth1".wantedBy [ "multi-user.target" ] ]
        [ "one agent id per interface" c.systemd.services."xdt-agent@eth1".environment.XDT_AGENT_ID "node/eth1" ]
        [
          "the token credential is replaced"
          c.systemd.services."xdt-agent@eth1".serviceConfig.LoadCredential
          [ "" "token:${token}" ]
        ]
        [
          "the file a missing token is named by follows the token"
          c.systemd.services."xdt-agent@eth1".environment.XDT_TOKEN_SOURCE or null
          token
        ]
        [
          "no check before the start that would not name the file"
          (c.systemd.services."xdt-agent@eth1".unitConfig ? AssertPathExists)
          false
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
        [ "the file a missing token is named by" c.systemd.services.xdt-central.environment { XDT_TOKEN_SOURCE = token; } ]
        [ "ports opened" (lib.sort lib.lessThan c.networking.firewall.allowedTCPPorts) [ 8080 50051 ] ]
        [ "no agent units" (lib.filter (lib.hasPrefix "xdt-agent@") (lib.attrNames c.systemd.services)) [ ] ]
        [ "no Prometheus of its own" c.services.prometheus.scrapeConfigs [ ] ]
        [ "no Grafana of its own" c.services.grafana.provision.dashboards.settings.providers [ ] ]
      ];

    "central next to Prometheus and Grafana" =
      let
        c = evaluate {
          services.prometheus.enable = true;
          services.grafana.enable = true;
          services.xdt = {
            enable = true;
            central = { enable = true; tokenFile = token; http.address = "0.0.0.0"; http.port = 8088; };
          };
        };
        share = "${c.services.xdt.package}/share/xdt";
        off = evaluate {
          services.prometheus.enable = true;
          services.grafana.enable = true;
          services.xdt = {
            enable = true;
            central = { enable = true; tokenFile = token; prometheus.enable = false; grafana.enable = false; };
          };
        };
      in
      [
        [ "no failed assertion" (failedAssertions c) [ ] ]
        [
          "a scrape job for central, on loopback"
          (map (j: { inherit (j) job_name; targets = lib.concatMap (s: s.targets) j.static_configs; }) c.services.prometheus.scrapeConfigs)
          [{ job_name = "xdt-central"; targets = [ "127.0.0.1:8088" ]; }]
        ]
        [ "the alert rules" c.services.prometheus.ruleFiles [ "${share}/prometheus/xdt.rules.yml" ] ]
        [ "Grafana provisions" c.services.grafana.provision.enable true ]
        [
          "the dashboards"
          (map (p: { inherit (p) name; path = p.options.path; }) c.services.grafana.provision.dashboards.settings.providers)
          [{ name = "xdt"; path = "${share}/grafana"; }]
        ]
        [ "turned off: no scrape job" off.services.prometheus.scrapeConfigs [ ] ]
        [ "turned off: no rules" off.services.prometheus.ruleFiles [ ] ]
        [ "turned off: no dashboards" off.services.grafana.provision.dashboards.settings.providers [ ] ]
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

    "flows on one interface, IPFIX to two collectors" =
      let
        c = evaluate (lib.recursiveUpdate node {
          services.xdt.agent.interfaces.eth1.flows = 65536;
          services.xdt.agent.ipfix = [ "192.0.2.9:4739" "collector.example.org:2055" ];
        });
        bad = evaluate (lib.recursiveUpdate node {
          services.xdt.agent.ipfix = [ "collector.example.org" ];
        });
      in
      [
        [ "no failed assertion" (failedAssertions c) [ ] ]
        [ "the attach unit sizes the tables" c.systemd.services."xdt-attach@eth1".environment.XDT_FLOWS "65536" ]
        [
          "the agent exports to both"
          (lib.hasInfix "XDT_IPFIX=192.0.2.9:4739,collector.example.org:2055\n" c.environment.etc."xdt/agent.conf".text)
          true
        ]
        [ "a collector without a port is refused" (builtins.tryEval (builtins.deepSeq bad.environment.etc."xdt/agent.conf".text true)).success false ]
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
        [ "its agent id names the interface" c.systemd.services."xdt-agent@br\\x2dlan".environment.XDT_AGENT_ID or null "node/br-lan" ]
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
        [ "no agent id: the agent's own" (c.systemd.services."xdt-agent@eth1".environment ? XDT_AGENT_ID) false ]
      ];

    "an agent id prefix of our own" =
      let c = evaluate (withAgent { agentId = "edge-7"; interfaces.eth2 = { }; }); in [
        [ "eth1" c.systemd.services."xdt-agent@eth1".environment.XDT_AGENT_ID or null "edge-7/eth1" ]
        [ "eth2" c.systemd.services."xdt-agent@eth2".environment.XDT_AGENT_ID or null "edge-7/eth2" ]
        [ "not in the shared agent.conf" (lib.hasInfix "XDT_AGENT_ID" c.environment.etc."xdt/agent.conf".text) false ]
      ];

    "firewalld" =
      let
        firewalld = rpfilter: extra: evaluate (lib.recursiveUpdate (withAgent extra) {
          networking.firewall.backend = "firewalld";
          services.firewalld.settings.IPv6_rpfilter = rpfilter;
        });
        refused = c: map (lib.hasInfix "firewalld's IPv6 reverse-path") (failedAssertions c);
      in
      [
        [ "strict drops the steered packets" (refused (firewalld "strict" { })) [ true ] ]
        [ "strict-forward passes them (NixOS's default)" (failedAssertions (firewalld "strict-forward" { })) [ ] ]
        [ "loose passes them" (failedAssertions (firewalld "loose" { })) [ ] ]
        [ "strict is fine without steering" (failedAssertions (firewalld "strict" { settings.XDT_NO_STEER = true; })) [ ] ]
        [ "no iptables or nftables exemption" (firewalld "loose" { }).networking.firewall.extraCommands "" ]
        [
          "firewalld run on its own, without NixOS's firewall"
          (refused (evaluate (lib.recursiveUpdate node {
            networking.firewall.enable = false;
            services.firewalld.enable = true;
          })))
          [ true ]
        ]
      ];

    "the IPv4 reverse-path filter" =
      let
        withAll = value: extra: evaluate (lib.recursiveUpdate (withAgent extra) {
          boot.kernel.sysctl."net.ipv4.conf.all.rp_filter" = value;
        });
      in
      [
        [
          "strict overrides the re-entry interfaces' 0"
          (map (lib.hasPrefix ''boot.kernel.sysctl."net.ipv4.conf.all.rp_filter" is 1'') (failedAssertions (withAll 1 { })))
          [ true ]
        ]
        [ "as a string too" (lib.length (failedAssertions (withAll "1" { }))) 1 ]
        [ "loose is fine" (failedAssertions (withAll 2 { })) [ ] ]
        [ "strict is fine without steering" (failedAssertions (withAll 1 { settings.XDT_EGRESS = "eth9"; })) [ ] ]
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
        [
          "pinned by commit"
          (builtins.match "github:NixOS/nixpkgs/[0-9a-f]{40}" flake.inputs.nixpkgs.url != null)
          true
        ]
        [
          "every package, check, dev shell and formatter evaluates with nothing built (no import from derivation)"
          (lib.all (d: lib.hasPrefix builtins.storeDir d.drvPath) flakeDerivations)
          true
        ]
        [ "as many derivations" (lib.length flakeDerivations) 28 ]
        [ "the demo app" (lib.hasSuffix "/bin/xdt-demo" outputs.apps.x86_64-linux.default.program) true ]
        [ "the probe vendors bpf/Cargo.lock alone" probe.cargoDeps.lockFile ../../bpf/Cargo.lock ]
        [ "the probe uses no build-std" (lib.hasInfix "build-std" probe.buildPhase) false ]
        [ "nor the library's source" (probe ? __CARGO_TESTS_ONLY_SRC_ROOT) false ]
        [ "the probe as nixpkgs' jail-ai" [ probe.RUSTC_BOOTSTRAP probe.RUSTFLAGS ] [ "1" "-C target-feature=" ] ]
        [
          "clippy denies correctness, not every warning"
          (map (lib.flip lib.hasInfix outputs.checks.x86_64-linux.clippy.buildPhase) [ "-D clippy::correctness" "-D warnings" ])
          [ true false ]
        ]
        [
          "the package's binaries, not xtask"
          outputs.packages.x86_64-linux.xdt.cargoBuildFlags
          [ "--workspace" "--exclude" "xtask" "--bins" ]
        ]
        [
          "the images run the package's daemons"
          (map (image: outputs.packages.x86_64-linux.${image}.config.Entrypoint) [ "agent-image" "central-image" ])
          (map (daemon: [ "${outputs.packages.x86_64-linux.xdt}/bin/${daemon}" ]) [ "xdt-agent" "xdt-central" ])
        ]
        [ "the VM test is no check (it needs KVM)" (outputs.checks.x86_64-linux ? vm) false ]
        [ "but a package" outputs.packages.x86_64-linux.vm-test.name "vm-test-run-xdt" ]
        [
          "the VM test's nodes are valid configurations"
          (map (n: failedAssertions (vmNode n)) [ "central" "client" "node" ])
          [ [ ] [ ] [ ] ]
        ]
        [
          "the VM test's Prometheus on central: the module's scrape job and rules, every 2 s"
          (
            let p = (vmNode "central").services.prometheus; in
            {
              inherit (p) enable ruleFiles;
              jobs = map (j: { inherit (j) job_name; targets = lib.concatMap (s: s.targets) j.static_configs; }) p.scrapeConfigs;
              intervals = [ p.globalConfig.scrape_interval p.globalConfig.evaluation_interval ];
            }
          )
          {
            enable = true;
            ruleFiles = [ "${stubPackage}/share/xdt/prometheus/xdt.rules.yml" ];
            jobs = [{ job_name = "xdt-central"; targets = [ "[::1]:8080" ]; }];
            intervals = [ "2s" "2s" ];
          }
        ]
        [ "and none elsewhere" (map (n: (vmNode n).services.prometheus.scrapeConfigs) [ "client" "node" ]) [ [ ] [ ] ] ]
        [ "the VM node keeps the probe's run time" (vmNode "node").boot.kernel.sysctl."kernel.bpf_stats_enabled" 1 ]
        [
          "the VM node's agent: its id and the test fault"
          (vmNode "node").systemd.services."xdt-agent@eth1".environment
          { XDT_AGENT_ID = "node/eth1"; XDT_TEST_FAULTS = "hang-on-sigusr2"; XDT_TOKEN_SOURCE = "/etc/xdt/token"; }
        ]
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
        "the agent id is per instance, not a setting"
        (map (lib.hasPrefix "services.xdt.agent.settings sets XDT_AGENT_ID")
          (failedAssertions (evaluate (withAgent { settings.XDT_AGENT_ID = "x"; }))))
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
