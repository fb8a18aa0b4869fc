# services.xdt: the xdt appliance on NixOS.
#
# It runs the unit files shipped in the package (systemd/ of the source tree, the single source
# of hardening) through systemd.packages, and adds only drop-ins: which instances start, the
# token's path, the attach mode, restart and reload triggers. Options land where the Debian
# install keeps them: /etc/xdt/agent.conf, /etc/xdt/central.conf (KEY=VALUE with the flags'
# environment names), /etc/xdt/rules/IF.rules, /etc/xdt/service-health.env.
# docs/nixos.md is the guide.
{ config, lib, pkgs, ... }:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkPackageOption
    literalExpression
    types
    ;

  cfg = config.services.xdt;
  agentCfg = cfg.agent;
  centralCfg = cfg.central;
  healthCfg = cfg.serviceHealth;

  # Values of a KEY=VALUE file (systemd's EnvironmentFile= syntax, read by `--config`).
  settingValue = types.oneOf [ types.bool types.int (types.strMatching "[^\n]*") ];
  renderValue = v: if v == true then "true" else if v == false then "false" else toString v;
  renderSettings = what: settings:
    lib.concatStrings (
      [ "# ${what}: written by the services.xdt NixOS module.\n" ]
      ++ lib.mapAttrsToList (k: v: "${k}=${renderValue v}\n") (
        lib.filterAttrs (_: v: v != null) settings
      )
    );

  # An address and a port as the daemons take them: IPv6 addresses in brackets.
  hostPort = address: port:
    if lib.hasInfix ":" address then "[${address}]:${toString port}" else "${address}:${toString port}";

  # Where a local Prometheus reaches central's HTTP side: loopback for a wildcard address.
  scrapeTarget =
    let
      inherit (centralCfg.http) address port;
      local = { "0.0.0.0" = "127.0.0.1"; "::" = "::1"; }.${address} or address;
    in
    hostPort local port;

  listenOption = what: address: port: {
    address = mkOption {
      type = types.str;
      default = address;
      example = "::";
      description = "Address ${what} listens on (`::` or `0.0.0.0` for every address).";
    };
    port = mkOption {
      type = types.port;
      default = port;
      description = "TCP port ${what} listens on.";
    };
  };

  tokenFileOption = who: mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "/run/keys/xdt-token";
    description = ''
      File holding the shared token (kept out of the Nix store: give a path as a string).
      ${who} reads it as the systemd credential `token`.
    '';
  };

  # RFC 42 settings: the environment names of the daemon's flags, in /etc/xdt/FILE.
  settingsOption = daemon: file: example: mkOption {
    type = types.submodule { freeformType = types.attrsOf (types.nullOr settingValue); };
    default = { };
    inherit example;
    description = ''
      Further options of /etc/xdt/${file}: the environment names of `${daemon}`'s flags
      (`${daemon} --help`); `null` leaves one out. ${daemon} refuses unknown keys and bad values
      at start, naming the line. A change restarts it.
    '';
  };

  # Interface names the kernel takes (at most 15 bytes, no slash or blank), and units can carry.
  validInterface = name: builtins.match "[A-Za-z0-9_.-]{1,15}" name != null && name != "." && name != "..";
  # The template units' instance names: systemd escapes `-` (the units use %I for the name).
  instance = name: lib.replaceStrings [ "-" ] [ "\\x2d" ] name;

  # One rule of docs/rules.md. Checked here for shape, and the whole file by `xdt rules check`
  # when the system is built, so a bad rule fails nixos-rebuild, not the boot.
  ruleType = types.submodule {
    options = {
      label = mkOption {
        type = types.strMatching "[A-Za-z0-9_.:-]{1,60}";
        description = "Name the matching packets are counted under; several rules may share one.";
      };
      src = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "192.0.2.0/24";
        description = "Source prefix (`ADDR/LEN` or a bare address).";
      };
      dst = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "2001:db8::/32";
        description = "Destination prefix (`ADDR/LEN` or a bare address).";
      };
      proto = mkOption {
        type = types.nullOr (types.either (types.enum [ "tcp" "udp" "icmp" "icmpv6" ]) (types.ints.between 0 255));
        default = null;
        description = "Upper-layer protocol, after IPv6 extension headers.";
      };
      dport = mkOption {
        type = types.nullOr (types.either types.port (types.strMatching "[0-9]{1,5}-[0-9]{1,5}"));
        default = null;
        example = "80-443";
        description = "Destination port or inclusive range `N-M`; needs `proto` tcp or udp.";
      };
      priority = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
        description = "Lower matches first (the file's default is 100); ties go to the earlier rule.";
      };
      action = mkOption {
        type = types.strMatching "count|drop|steer|sample [1-9][0-9]*";
        default = "count";
        example = "sample 100";
        description = ''
          `count`; `sample N` (one metadata event per N matching packets and CPU); `drop`
          (XDP_DROP after counting); `steer` (through the agent's AF_XDP socket, re-injected, and
          passed on when no live agent takes it).
        '';
      };
    };
  };

  renderRule = r:
    lib.concatStringsSep " " (
      [ r.label ]
      ++ lib.optionals (r.src != null) [ "src" r.src ]
      ++ lib.optionals (r.dst != null) [ "dst" r.dst ]
      ++ lib.optionals (r.proto != null) [ "proto" (toString r.proto) ]
      ++ lib.optionals (r.dport != null) [ "dport" (toString r.dport) ]
      ++ lib.optionals (r.priority != null) [ "priority" (toString r.priority) ]
      ++ lib.optionals (r.action != "count") [ "action" r.action ]
    );

  rulesText = name: icfg:
    lib.concatStrings (
      [ "# Rules of ${name}: written by the services.xdt NixOS module (docs/rules.md).\n" ]
      ++ map (r: renderRule r + "\n") icfg.rules
      ++ lib.optional (icfg.extraRules != "") icfg.extraRules
    );

  # The rendered file, refused at build time if `xdt rules check` refuses it (it runs unprivileged
  # and reads nothing but the file). Skipped when the package cannot run on the build machine.
  checkedRules = name: icfg:
    let
      text = rulesText name icfg;
      canRun = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
    in
    pkgs.runCommand "xdt-${name}.rules" { inherit text; passAsFile = [ "text" ]; } (
      ''
        cp "$textPath" "$out"
      ''
      + lib.optionalString canRun ''
        ${cfg.package}/bin/xdt rules check "$out"
      ''
    );

  # XDT_AGENT_ID is per instance (the drop-ins below): the file would override it.
  agentSettings = {
    XDT_CENTRAL = agentCfg.central;
    XDT_IPFIX = if agentCfg.ipfix == [ ] then null else lib.concatStringsSep "," agentCfg.ipfix;
  } // agentCfg.settings;
  agentConf = renderSettings "xdt-agent" agentSettings;

  centralSettings = {
    XDT_HTTP_LISTEN = hostPort centralCfg.http.address centralCfg.http.port;
    XDT_TELEMETRY_LISTEN = hostPort centralCfg.telemetry.address centralCfg.telemetry.port;
    XDT_OTLP_ENDPOINT = centralCfg.otlpEndpoint;
  } // centralCfg.settings;
  centralConf = renderSettings "xdt-central" centralSettings;

  # Keys the module sets itself, or that are per instance, or that would bypass the credential.
  reservedKeysAssertion = role: keys: why:
    let set = lib.filter (k: cfg.${role}.settings ? ${k}) keys; in
    {
      assertion = set == [ ];
      message = ''
        services.xdt.${role}.settings sets ${lib.concatStringsSep ", " set}:
        ${why}
      '';
    };

  # The units read the token as the credential `token`; the drop-in replaces its source, and
  # XDT_TOKEN_SOURCE (the file a daemon names when systemd had only the units' placeholder,
  # SetCredential=token:\n, because the file does not exist) follows it.
  tokenCredential = file: [ "" "token:${file}" ];
  tokenSource = file: { XDT_TOKEN_SOURCE = file; };

  tokenAssertions = name: opt: file: [
    {
      assertion = file != null;
      message = ''
        services.xdt.${name}.tokenFile is not set: ${opt} needs the file holding the shared token
        that central and its agents authenticate with (for example a secret deployed to
        /run/keys/xdt-token, readable by root only).
      '';
    }
    {
      assertion = file == null || lib.hasPrefix "/" file;
      message = "services.xdt.${name}.tokenFile must be an absolute path, not \"${toString file}\".";
    }
  ];

  # Steered packets come back into the host stack through the agent's re-entry veth pairs
  # (xdt<ifindex>a/h), with the client's source address: a strict reverse-path check drops them.
  steering = agentCfg.enable && !(agentCfg.settings.XDT_NO_STEER or false)
    && (agentCfg.settings.XDT_EGRESS or null) == null;
  firewall = config.networking.firewall;
  rpfilterExemption = steering && firewall.enable && firewall.checkReversePath != false;
  # firewalld's reverse-path filter is IPv6 only and global: no interface can be exempted. These
  # modes let the re-injected packets (addressed to this host, with a route back to the client
  # through the watched interface) through.
  firewalld = config.services.firewalld.enable or false || (firewall.enable && firewall.backend == "firewalld");
  firewalldRpfilter = config.services.firewalld.settings.IPv6_rpfilter or "strict";
  firewalldPasses = lib.elem firewalldRpfilter [ "no" "loose" "strict-forward" "loose-forward" ];
  # IPv4: the kernel takes the larger of all/ and the interface's rp_filter, so a strict (1)
  # all/ overrides the agent's 0 on its re-entry interfaces; loose (2) lets them through.
  ipv4Rpfilter = toString (config.boot.kernel.sysctl."net.ipv4.conf.all.rp_filter" or "");
  noSteering = "or turn steering off (services.xdt.agent.settings.XDT_NO_STEER = true)";

  kernelVersion = config.boot.kernelPackages.kernel.version;
  badInterfaces = lib.filter (n: !validInterface n) (lib.attrNames agentCfg.interfaces);
  rulesFiles = lib.mapAttrs checkedRules agentCfg.interfaces;
  healthEnv = "XDT_SERVICE_LISTEN=${hostPort healthCfg.listen.address healthCfg.listen.port}\n";
in
{
  options.services.xdt = {
    enable = mkEnableOption "xdt, XDP packet telemetry (pick the roles below)";

    package = mkPackageOption pkgs "xdt" { };

    agent = {
      enable = mkEnableOption "the xdt probe and agent on `services.xdt.agent.interfaces`";

      interfaces = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            rules = mkOption {
              type = types.listOf ruleType;
              default = [ ];
              example = literalExpression ''
                [
                  { label = "dns"; proto = "udp"; dport = 53; action = "sample 100"; }
                  { label = "web"; proto = "tcp"; dport = "80-443"; action = "steer"; }
                ]
              '';
              description = ''
                Rules of this interface, in order (docs/rules.md). Rendered to
                /etc/xdt/rules/IF.rules and checked with `xdt rules check` when the system is
                built; a change is applied by `nixos-rebuild switch` as an atomic reload.
              '';
            };
            extraRules = mkOption {
              type = types.lines;
              default = "";
              example = "blocked src 192.0.2.0/24 action drop priority 1";
              description = "Rule lines in the file's own syntax, after `rules`.";
            };
            mode = mkOption {
              type = types.enum [ "auto" "native" "generic" ];
              default = agentCfg.mode;
              defaultText = literalExpression "config.services.xdt.agent.mode";
              description = "XDP attach mode of this interface.";
            };
            flows = mkOption {
              type = types.ints.u32;
              default = 0;
              example = 65536;
              description = ''
                Record flows on this interface, up to N per table (two tables of about
                0.3 KiB an entry, docs/flows.md); 0 is off, which costs nothing per packet. The
                agent then sends the flows to central and to `services.xdt.agent.ipfix`. A
                change takes effect when the probe is attached again (a restart of
                `xdt-attach@IF`, which the switch does).
              '';
            };
          };
        });
        default = { };
        example = literalExpression ''{ eth1.rules = [ { label = "web"; proto = "tcp"; dport = 443; } ]; }'';
        description = ''
          Interfaces to attach the probe to, each with its rules: one `xdt-attach@IF` and one
          `xdt-agent@IF` unit per interface.
        '';
      };

      mode = mkOption {
        type = types.enum [ "auto" "native" "generic" ];
        default = "auto";
        description = ''
          XDP attach mode: `native` (driver) where the driver supports it with `auto`, `generic`
          (slower, every interface) otherwise.
        '';
      };

      central = mkOption {
        type = types.str;
        example = "central.example.org:50051";
        description = "Central's telemetry address, HOST:PORT.";
      };

      agentId = mkOption {
        type = types.nullOr (types.strMatching "[^\n]+");
        default = if config.networking.hostName == "" then null else config.networking.hostName;
        defaultText = literalExpression "config.networking.hostName";
        example = "edge-7";
        description = ''
          This node's name at central, the prefix of its agents' ids: one agent per interface,
          and the agent of `eth0` reports as `AGENTID/eth0`. `null` leaves the id to the agent,
          which takes `HOSTNAME/eth0` at run time (the same with the default).
        '';
      };

      tokenFile = tokenFileOption "The agent";

      ipfix = mkOption {
        type = types.listOf (types.strMatching "[^,[:space:]]+:[0-9]+");
        default = [ ];
        example = [ "collector.example.org:4739" ];
        description = ''
          IPFIX collectors (HOST:PORT, UDP) that get the flows of every interface with `flows`
          set (docs/flows.md: the template, how a fleet scales).
        '';
      };

      settings = settingsOption "xdt-agent" "agent.conf" { XDT_INTERVAL = 5; XDT_XSK_MODE = "copy"; XDT_LOG_LEVEL = "debug"; };
    };

    central = {
      enable = mkEnableOption "the xdt central server (telemetry, dashboard, /metrics, OTLP)";

      http = listenOption "the dashboard, /metrics.json, /metrics and /healthz" "127.0.0.1" 8080;
      telemetry = listenOption "agents' telemetry" "0.0.0.0" 50051;

      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the telemetry and HTTP ports in the firewall.";
      };

      tokenFile = tokenFileOption "Central (checking the agents' token)";

      otlpEndpoint = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "http://127.0.0.1:4318";
        description = "OpenTelemetry collector to push metrics to over OTLP/HTTP.";
      };

      settings = settingsOption "xdt-central" "central.conf" { XDT_RECENT_EVENTS = 1024; XDT_OTLP_INTERVAL = 30; };

      prometheus.enable = mkOption {
        type = types.bool;
        default = config.services.prometheus.enable;
        defaultText = literalExpression "config.services.prometheus.enable";
        description = ''
          Add a scrape job `xdt-central` for this central's /metrics, and xdt's alert rules
          (share/xdt/prometheus/xdt.rules.yml of the package), to services.prometheus.
        '';
      };

      grafana.enable = mkOption {
        type = types.bool;
        default = config.services.grafana.enable;
        defaultText = literalExpression "config.services.grafana.enable";
        description = ''
          Provision xdt's Grafana dashboards (share/xdt/grafana of the package) in
          services.grafana; they use Grafana's default Prometheus data source.
        '';
      };
    };

    serviceHealth = {
      enable = mkEnableOption "xdt-service-health, the sample HTTP service (/healthz, /echo) the demo steers";
      listen = listenOption "the sample service" "::" 8081;
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open the sample service's port in the firewall.";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = agentCfg.enable || centralCfg.enable || healthCfg.enable;
          message = ''
            services.xdt.enable is set but no role is: enable services.xdt.agent,
            services.xdt.central or services.xdt.serviceHealth.
          '';
        }
      ];
      environment.systemPackages = [ cfg.package ];
      systemd.packages = [ cfg.package ];
    }

    (mkIf agentCfg.enable {
      assertions = [
        {
          assertion = agentCfg.interfaces != { };
          message = ''
            services.xdt.agent.enable is set without an interface: name at least one in
            services.xdt.agent.interfaces (for example `interfaces.eth0.rules = [ ];`).
          '';
        }
        (reservedKeysAssertion "agent" [ "XDT_CONFIG" "XDT_INTERFACE" "XDT_TOKEN_FILE" "XDT_AGENT_ID" ] ''
          the module sets the config file, the interface and the agent id (from
          services.xdt.agent.agentId) per instance, and the token comes from
          services.xdt.agent.tokenFile.'')
        {
          assertion = !(steering && firewalld) || firewalldPasses;
          message = ''
            services.xdt.agent steers packets back into this host through its re-entry interfaces
            (xdt<ifindex>h) with the client's source address, and firewalld's IPv6 reverse-path
            filter (services.firewalld.settings.IPv6_rpfilter = "${firewalldRpfilter}") would drop
            them; firewalld cannot exempt an interface from it. Use "loose", "strict-forward",
            "loose-forward" or "no" (the firewalld backend derives it from
            networking.firewall.checkReversePath and filterForward), ${noSteering}.
          '';
        }
        {
          assertion = !steering || ipv4Rpfilter != "1";
          message = ''
            boot.kernel.sysctl."net.ipv4.conf.all.rp_filter" is 1 (strict): the kernel applies the
            larger of it and the 0 the agent sets on its re-entry interfaces (xdt<ifindex>h), so
            every steered IPv4 packet would be dropped. Use 2 (loose) or 0 (the firewalld backend
            derives it from networking.firewall.checkReversePath), ${noSteering}.
          '';
        }
        {
          assertion = lib.versionAtLeast kernelVersion "5.9";
          message = ''
            xdt needs Linux 5.9 or later (BPF ring buffer, CAP_BPF, bpf_link for XDP); this
            system's kernel is ${kernelVersion} (boot.kernelPackages).
          '';
        }
        {
          assertion = lib.versionAtLeast kernelVersion "5.19" || (agentCfg.settings.XDT_KEEP_CAPABILITIES or false);
          message = ''
            Linux ${kernelVersion} is too old for the capability-less agent: reading maps through
            held descriptors without CAP_BPF needs 5.19. Use a newer boot.kernelPackages, or set
            services.xdt.agent.settings.XDT_KEEP_CAPABILITIES = true to keep the agent's
            capabilities after setup.
          '';
        }
        {
          assertion = badInterfaces == [ ];
          message = ''
            services.xdt.agent.interfaces: ${lib.concatMapStringsSep ", " (n: "\"${n}\"") badInterfaces}
            is not an interface name (1-15 of A-Z a-z 0-9 _ . -).
          '';
        }
      ] ++ tokenAssertions "agent" "the agent" agentCfg.tokenFile;

      environment.etc = {
        "xdt/agent.conf".text = agentConf;
      } // lib.mapAttrs'
        (name: icfg:
          lib.nameValuePair "xdt/rules/${name}.rules" {
            source = rulesFiles.${name};
            # A copy, not a link into the store: `xdt rules load` and operators may edit it in place
            # until the next switch.
            mode = "0644";
          })
        agentCfg.interfaces;

      systemd.services = lib.mkMerge (lib.mapAttrsToList
        (name: icfg: {
          "xdt-attach@${instance name}" = {
            overrideStrategy = "asDropin";
            wantedBy = [ "multi-user.target" ];
            # The unit's EnvironmentFile= (/etc/xdt/attach.env, Debian's) would win over
            # Environment=: cleared, so a leftover file cannot override the mode set here.
            serviceConfig.EnvironmentFile = [ "" ];
            environment.XDT_ATTACH_MODE = icfg.mode;
            environment.XDT_FLOWS = toString icfg.flows;
            # New rules are a reload: atomic, counters kept, the agent reloads with it. The
            # flow tables' size is fixed at attach: a change of it changes the unit, which the
            # switch restarts.
            reloadTriggers = [ rulesFiles.${name} ];
          };
          "xdt-agent@${instance name}" = {
            overrideStrategy = "asDropin";
            wantedBy = [ "multi-user.target" ];
            environment = tokenSource agentCfg.tokenFile // lib.optionalAttrs (agentCfg.agentId != null) {
              XDT_AGENT_ID = "${agentCfg.agentId}/${name}";
            };
            serviceConfig.LoadCredential = tokenCredential agentCfg.tokenFile;
            restartTriggers = [ agentConf agentCfg.tokenFile ];
          };
        })
        agentCfg.interfaces);

      # The re-entry pairs' host ends pass the firewall's reverse-path check (the agent already
      # turns the kernel's rp_filter off on them).
      networking.firewall.extraReversePathFilterRules = mkIf (rpfilterExemption && firewall.backend == "nftables") ''
        iifname "xdt*" accept comment "xdt re-entry pairs: steered packets re-injected"
      '';
      networking.firewall.extraCommands = mkIf (rpfilterExemption && firewall.backend == "iptables") ''
        ip46tables -t mangle -I nixos-fw-rpfilter -i xdt+ -j RETURN
      '';
    })

    (mkIf centralCfg.enable {
      assertions = tokenAssertions "central" "central" centralCfg.tokenFile ++ [
        (reservedKeysAssertion "central" [ "XDT_CONFIG" "XDT_TOKEN_FILE" ] ''
          the module sets the config file, and the token comes from services.xdt.central.tokenFile.'')
      ];
      environment.etc."xdt/central.conf".text = centralConf;
      systemd.services.xdt-central = {
        overrideStrategy = "asDropin";
        wantedBy = [ "multi-user.target" ];
        environment = tokenSource centralCfg.tokenFile;
        serviceConfig.LoadCredential = tokenCredential centralCfg.tokenFile;
        restartTriggers = [ centralConf centralCfg.tokenFile ];
      };
      networking.firewall.allowedTCPPorts = mkIf centralCfg.openFirewall [
        centralCfg.http.port
        centralCfg.telemetry.port
      ];
    })

    (mkIf (centralCfg.enable && centralCfg.prometheus.enable) {
      services.prometheus.scrapeConfigs = [{
        job_name = "xdt-central";
        static_configs = [{ targets = [ scrapeTarget ]; }];
      }];
      services.prometheus.ruleFiles = [ "${cfg.package}/share/xdt/prometheus/xdt.rules.yml" ];
    })

    (mkIf (centralCfg.enable && centralCfg.grafana.enable) {
      services.grafana.provision.enable = lib.mkDefault true;
      services.grafana.provision.dashboards.settings.providers = [{
        name = "xdt";
        options.path = "${cfg.package}/share/xdt/grafana";
      }];
    })

    (mkIf healthCfg.enable {
      environment.etc."xdt/service-health.env".text = healthEnv;
      systemd.services.xdt-service-health = {
        overrideStrategy = "asDropin";
        wantedBy = [ "multi-user.target" ];
        restartTriggers = [ healthEnv ];
      };
      networking.firewall.allowedTCPPorts = mkIf healthCfg.openFirewall [ healthCfg.listen.port ];
    })
  ]);
}
