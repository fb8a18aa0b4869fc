{
  description = "xdt: XDP packet telemetry (Rust probe, capability-less agent, central server) with a NixOS module";

  # Pinned by commit (docs/nixos.md: how it was chosen): a revision whose rustc ships `core` for
  # bpfel-unknown-none and whose bpf-linker is built against rustc's own LLVM. The first `nix`
  # command writes flake.lock; commit it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/af39089706442082f28a864b146c86d094e18e61";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # XDP and AF_XDP are Linux's.
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system:
        f (nixpkgs.legacyPackages.${system}.extend self.overlays.default));

      version = (lib.importTOML ./Cargo.toml).workspace.package.version;
      # The OTLP test's receiver decodes requests with the official protobufs.
      otlpPython = pkgs: pkgs.python3.withPackages (ps: [ ps.opentelemetry-proto ]);

      # The host workspace and everything its build scripts read (ui/ is embedded into central,
      # bpf/ is compiled by xdt-probe), the unit files; no target/ directories, docs or VM tests.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./crates
          ./bpf/Cargo.toml
          ./bpf/Cargo.lock
          ./bpf/src
          ./ui
          ./systemd
        ];
      };

      # The XDP probe's sources: bpf/, the shared types it builds with, and the workspace
      # manifest those inherit their package fields from.
      probeSrc = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./bpf/Cargo.toml
          ./bpf/Cargo.lock
          ./bpf/src
          ./crates/xdt-common
        ];
      };

      # The XDP probe: bpf/ for bpfel-unknown-none, the way nixpkgs builds aya-ebpf probes (its
      # jail-ai package): nixpkgs' rustc ships `core` for that target, so there is no build-std,
      # no standard-library source and nothing to vendor but bpf/Cargo.lock, a file of this
      # repository (no import from derivation).
      probe =
        { lib, stdenv, rustPlatform, rustc, cargo, bpf-linker }:
        stdenv.mkDerivation {
          pname = "xdt-probe";
          inherit version;
          src = probeSrc;
          cargoRoot = "bpf";
          cargoDeps = rustPlatform.importCargoLock { lockFile = ./bpf/Cargo.lock; };
          nativeBuildInputs = [ rustPlatform.cargoSetupHook rustc cargo bpf-linker ];
          env = {
            # The target is tier 3: a stable compiler builds for it with RUSTC_BOOTSTRAP.
            RUSTC_BOOTSTRAP = "1";
            # As jail-ai: replaces any rustflags of the cargo configuration (cargoSetupHook's are
            # for the build platform's targets), so nothing but the defaults reaches BPF codegen.
            RUSTFLAGS = "-C target-feature=";
          };
          buildPhase = ''
            runHook preBuild
            (cd bpf && cargo build --offline --locked --release --target bpfel-unknown-none)
            runHook postBuild
          '';
          installPhase = ''
            runHook preInstall
            for object in xdt bench-pass bench-lpm demo-counter unverifiable; do
              install -Dm444 "bpf/target/bpfel-unknown-none/release/$object" "$out/$object"
            done
            runHook postInstall
          '';
          meta = {
            description = "The xdt XDP probe and its benchmark baselines (BPF objects)";
            license = [ lib.licenses.mit lib.licenses.asl20 ];
            platforms = lib.platforms.linux;
          };
        };

      # The binaries (xdt, xdt-agent, xdt-central, xdt-service-health) with the probe built in,
      # and the unit files of systemd/ with their paths pointed into the store.
      xdt =
        { lib, rustPlatform, coreutils, xdt-probe }:
        rustPlatform.buildRustPackage {
          pname = "xdt";
          inherit version src;
          cargoLock.lockFile = ./Cargo.lock;
          # xtask is the Debian machines' set-up and test runner, not part of the appliance.
          cargoBuildFlags = [ "--workspace" "--exclude" "xtask" "--bins" ];
          # xdt-datapath's build script takes the prebuilt objects instead of compiling bpf/.
          env.XDT_PROBE_DIR = "${xdt-probe}";
          # The tests are checks.<system>.cargo-test (most need root, which a build has not).
          doCheck = false;
          postInstall = ''
            install -Dm444 -t "$out/lib/systemd/system" systemd/*.service
            for unit in "$out"/lib/systemd/system/*.service; do
              substituteInPlace "$unit" \
                --replace-quiet /usr/bin/ "$out/bin/" \
                --replace-quiet /bin/kill ${coreutils}/bin/kill
            done
            # Every command of the units must now be in the store.
            if grep -nE '(^|[=+-])/(usr/)?s?bin/' "$out"/lib/systemd/system/*.service; then
              echo "unit files still name programs outside the store (above)" >&2
              exit 1
            fi
            mkdir -p "$out/share/xdt"
            cp -r ui "$out/share/xdt/ui"
            # Grafana dashboards and Prometheus alert rules (docs/observability.md); the module
            # provisions them where Prometheus and Grafana run.
            cp -r docs/observability/grafana docs/observability/prometheus "$out/share/xdt/"
          '';
          passthru.probe = xdt-probe;
          meta = {
            description = "XDP packet telemetry: probe, agent, central server, dashboard";
            license = [ lib.licenses.mit lib.licenses.asl20 ];
            platforms = lib.platforms.linux;
            mainProgram = "xdt";
          };
        };
    in
    {
      overlays.default = final: _prev: {
        xdt-probe = final.callPackage probe { };
        xdt = final.callPackage xdt { };
      };

      packages = forAllSystems (pkgs: {
        inherit (pkgs) xdt xdt-probe;
        default = pkgs.xdt;
        # The appliance under real systemd: three NixOS VMs running vm-tests/scenario.py. Not a
        # check: it needs KVM (the `kvm` and `nixos-test` system features), which `nix flake check`
        # must not require. `nix build .#vm-test -L` where KVM is; `nix flake check` evaluates it.
        vm-test = pkgs.testers.runNixOSTest (import ./vm-tests/nixos.nix { inherit self; });
      } // {
        # The OCI images of docs/kubernetes/ (the pods run `sh`, `sleep` and the xdt binaries from
        # PATH): `nix build .#agent-image && podman load < result`. `cargo xtask images` builds
        # the same two from the .deb where there is no Nix.
        agent-image = pkgs.dockerTools.buildLayeredImage {
          name = "xdt-agent";
          tag = version;
          contents = [ pkgs.xdt pkgs.busybox ];
          config = {
            Entrypoint = [ "${pkgs.xdt}/bin/xdt-agent" ];
            Env = [ "PATH=/bin" ];
          };
        };
        central-image = pkgs.dockerTools.buildLayeredImage {
          name = "xdt-central";
          tag = version;
          contents = [ pkgs.xdt ];
          config = {
            Entrypoint = [ "${pkgs.xdt}/bin/xdt-central" ];
            Env = [ "PATH=/bin" ];
            User = "65534:65534";
          };
        };
      });

      # `sudo nix run .#demo`: the throw-away lab of `xdt demo` (network namespaces, needs root).
      apps = forAllSystems (pkgs: {
        demo = {
          type = "app";
          program = lib.getExe (pkgs.writeShellApplication {
            name = "xdt-demo";
            runtimeInputs = [ pkgs.xdt pkgs.iproute2 pkgs.iputils pkgs.util-linux pkgs.curl ];
            text = ''exec xdt demo "$@"'';
          });
          meta.description = "A throw-away lab in network namespaces with live telemetry";
        };
        default = self.apps.${pkgs.stdenv.hostPlatform.system}.demo;
      });

      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nixos-modules/xdt.nix ];
        services.xdt.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.xdt;
      };

      checks = forAllSystems (pkgs:
        let
          inherit (pkgs) xdt;
          # Where the .nix files are (not all of ./., which holds target/ in a working tree).
          nixFiles = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions ([ ./flake.nix ]
              ++ map (lib.fileset.fileFilter (file: file.hasExt "nix")) [ ./nixos-modules ./vm-tests ]);
          };
        in
        {
          package = xdt;
          probe = pkgs.xdt-probe;

          # The tests that need no root: the root-only ones report themselves skipped.
          cargo-test = xdt.overrideAttrs (old: {
            pname = "xdt-cargo-test";
            doCheck = true;
            nativeCheckInputs = (old.nativeCheckInputs or [ ]) ++ [
              pkgs.prometheus # promtool
              pkgs.systemd # systemd-analyze
              (otlpPython pkgs)
            ];
            cargoTestFlags = [ "--workspace" ];
            # One test at a time, as the README runs them.
            dontUseCargoParallelTests = true;
            # Each needs something a build sandbox has not: Nix itself, a checkout of nixpkgs'
            # lib, or root with qemu.
            checkFlags = [
              "--skip=every_nix_file_parses"
              "--skip=nix_files_are_formatted"
              "--skip=the_module_evaluates"
            ];
          });

          # Correctness lints and the workspace's own denials (unwrap_used, unsafe_op_in_unsafe_fn)
          # fail the check; everything else warns, so a newer clippy's new lints do not break the
          # build of a pinned revision. CI denies every warning with its own toolchain.
          clippy = xdt.overrideAttrs (old: {
            pname = "xdt-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --workspace --all-targets -- -D clippy::correctness
              runHook postBuild
            '';
            installPhase = "touch $out";
            doCheck = false;
          });

          rustfmt = pkgs.runCommand "xdt-rustfmt" { nativeBuildInputs = [ pkgs.rustfmt ]; } ''
            cd ${src}
            find crates bpf/src -name '*.rs' -not -path '*/target/*' -print0 \
              | xargs -0 rustfmt --edition 2024 --check
            touch $out
          '';

          nix-format = pkgs.runCommand "xdt-nix-format" { nativeBuildInputs = [ pkgs.nixpkgs-fmt ]; } ''
            nixpkgs-fmt --check ${nixFiles}
            touch $out
          '';

        });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.rustc
            pkgs.cargo
            pkgs.bpf-linker
            pkgs.bpftool
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.iproute2
            pkgs.prometheus
            pkgs.nixpkgs-fmt
            (otlpPython pkgs)
          ];
          # crates/xdt-datapath/build.rs compiles bpf/ with these (docs/building.md); this rustc
          # ships core for bpfel-unknown-none, so build.rs passes no build-std.
          XDT_BPF_RUSTC = "${pkgs.rustc}/bin/rustc";
          XDT_BPF_CARGO = "${pkgs.cargo}/bin/cargo";
          # For rust-analyzer.
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
