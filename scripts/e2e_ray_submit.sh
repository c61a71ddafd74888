#!/usr/bin/env bash
# End-to-end proof of `ray up` / `ray submit` / `ray down` with cluster.local.yaml on this one machine.
#
#   scripts/e2e_ray_submit.sh                 # submits experiments/referential_game.py with a tiny config
#   E2E_SCRIPT=path/to/x.py E2E_ARGS="..." scripts/e2e_ray_submit.sh
#
# What it does (as root, which it needs for sshd and useradd):
#   1. apt-get installs openssh-server, rsync and netcat-openbsd when missing (services are not started);
#   2. starts a private sshd on 127.0.0.1:<spare port> with its own host key, authorized_keys, config and
#      pid file, all in a temp dir, allowing only a throwaway user created for this run;
#      /etc/ssh, root's ~/.ssh and every existing user's shell files are never touched;
#   3. renders cluster.local.yaml for that sshd (user, key, proxy command for the port, spare Ray ports,
#      and setup commands that install the repo from file_mounts with pip, offline, on top of this
#      machine's .venv packages, since nothing may be downloaded here);
#   4. ray up; ray submit ... experiments/referential_game.py -- <tiny config>; ray rsync-down the
#      results; checks results.csv; ray down;
#   5. on exit (success, failure or ^C) stops Ray, sshd and every process of the throwaway user (by pid),
#      deletes the user and the temp dir.
# Exit status 0 only if the results file came back with the expected rows.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST_PY="${HOST_PY:-$REPO/.venv/bin/python}"
RAY="$REPO/.venv/bin/ray"
SCRIPT="${E2E_SCRIPT:-$REPO/experiments/referential_game.py}"
# tiny sweep: 2 sigmas x 3 protocols x 2 receivers x 1 seed x n=32 = 12 rows, with a micro autoencoder trained
# on the head for a few steps (the path is what is tested here, not the numbers)
ARGS="${E2E_ARGS:---run-name e2e --results-dir ~/results --runs-dir ~/runs --sigmas 0 1.5 --seeds 0 --protocols vector hash uncoded-tokens --channel-uses 32 --episodes 64 --batch-size 64 --passage-length 8 --num-passages 256 --fit-passages 512 --ae-hidden-size 32 --ae-intermediate-size 64 --ae-latent-dim 16 --ae-steps 20 --ae-batch-size 32 --no-plots}"
EXPECT_ROWS="${E2E_EXPECT_ROWS:-12}"
START=$(date +%s)

log() { echo "[e2e $(($(date +%s) - START))s] $*"; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sshd and useradd need it)"
[ -x "$HOST_PY" ] || die "no $HOST_PY: run 'make venv' first"
[ -f "$SCRIPT" ] || die "no script $SCRIPT"

# ---- 1. packages ---------------------------------------------------------------------------------
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null || need+=(rsync)
command -v nc >/dev/null || need+=(netcat-openbsd)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  # a policy-rc.d that denies service starts, so the package's own sshd is not started on port 22
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# ---- 2. private sshd and throwaway user ----------------------------------------------------------
WORK="$(mktemp -d /tmp/latentcomm-e2e.XXXXXX)"
chmod 755 "$WORK"
TAG="$(basename "$WORK" | tr -dc 'a-zA-Z0-9' | tail -c 6 | tr 'A-Z' 'a-z')"
E2E_USER="lce2e$TAG"
CLUSTER="latentcomm-e2e-$TAG"
SSHD_PID=""
MADE_RUN_SSHD=0
CFG="$WORK/cluster.yaml"

free_port() { "$HOST_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
  rc=$?
  set +e
  trap - EXIT INT TERM
  log "cleanup (exit status $rc)"
  if [ -f "$CFG" ]; then
    timeout 60 "$RAY" down -y "$CFG" >"$WORK/ray_down.log" 2>&1 || log "ray down failed (see below)"
  fi
  if id "$E2E_USER" >/dev/null 2>&1; then
    # whatever Ray (or anything else) the throwaway user still runs: stop it by pid
    for sig in TERM KILL; do
      pids=$(pgrep -u "$E2E_USER" || true)
      [ -z "$pids" ] && break
      for p in $pids; do kill -s "$sig" "$p" 2>/dev/null; done
      sleep 2
    done
    userdel -r "$E2E_USER" >/dev/null 2>&1 || userdel "$E2E_USER" || log "could not delete user $E2E_USER"
  fi
  if [ -n "$SSHD_PID" ]; then kill "$SSHD_PID" 2>/dev/null; fi
  [ "$MADE_RUN_SSHD" = 1 ] && rmdir /run/sshd 2>/dev/null
  rm -f "/tmp/cluster-$CLUSTER.state" "/tmp/cluster-$CLUSTER.lock"
  rm -rf "/tmp/ray-$E2E_USER"
  # the ssh ControlPath dir Ray made for this cluster (named by a hash of the cluster name)
  ctl="$(printf %s "$CLUSTER" | sha256sum | cut -c1-10)"
  for d in /tmp/ray_ssh_*/"$ctl"; do [ -d "$d" ] && rm -rf "$d"; done
  # Ray's cached copies of this run's cluster config
  grep -l "$CLUSTER" /tmp/ray-config-* 2>/dev/null | while read -r f; do rm -f "$f"; done
  if [ "$rc" != 0 ]; then
    # the lines that say what went wrong, not whole ssh logs; E2E_LOG_DIR keeps the full logs
    for f in "$WORK"/*.log; do
      [ -f "$f" ] || continue
      errs=$(grep -a -i -E 'error|fail|denied|no such|traceback' "$f" | grep -v -E 'VVINFO|syslogin' | tail -n 5)
      [ -n "$errs" ] && { echo "---- $(basename "$f"):"; echo "$errs" | cut -c1-300; }
    done
    if [ -n "${E2E_LOG_DIR:-}" ]; then
      mkdir -p "$E2E_LOG_DIR" && cp "$WORK"/*.log "$E2E_LOG_DIR"/ 2>/dev/null && log "full logs in $E2E_LOG_DIR"
    fi
  fi
  rm -rf "$WORK"
  log "done in $(($(date +%s) - START))s"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "throwaway user $E2E_USER, temp dir $WORK"
# password "*": no password login, but not "locked" (sshd without PAM refuses locked accounts)
useradd --create-home --shell /bin/bash --password "*" "$E2E_USER"
HOME_DIR="$(getent passwd "$E2E_USER" | cut -d: -f6)"
# the user's own (new) login shell: a private Ray temp dir so nothing clashes with other Ray users
cat >>"$HOME_DIR/.bashrc" <<EOF
export RAY_TMPDIR=/tmp/ray-$E2E_USER
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
EOF
chown "$E2E_USER:" "$HOME_DIR/.bashrc"

ssh-keygen -q -t ed25519 -N '' -f "$WORK/ssh_host_ed25519_key" -C "latentcomm-e2e-host"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_ed25519" -C "latentcomm-e2e-client"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
chmod 644 "$WORK/authorized_keys"
SSH_PORT="$(free_port)"
cat >"$WORK/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $WORK/ssh_host_ed25519_key
PidFile $WORK/sshd.pid
AuthorizedKeysFile $WORK/authorized_keys
AllowUsers $E2E_USER
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
X11Forwarding no
PrintMotd no
EOF
if [ ! -d /run/sshd ]; then mkdir -p /run/sshd && chmod 755 /run/sshd && MADE_RUN_SSHD=1; fi
/usr/sbin/sshd -t -f "$WORK/sshd_config" || die "sshd config invalid"
/usr/sbin/sshd -f "$WORK/sshd_config" -E "$WORK/sshd.log"
for _ in $(seq 50); do [ -s "$WORK/sshd.pid" ] && break; sleep 0.1; done
SSHD_PID="$(cat "$WORK/sshd.pid")"
log "sshd pid $SSHD_PID on 127.0.0.1:$SSH_PORT"
ssh -i "$WORK/id_ed25519" -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o "ProxyCommand=nc 127.0.0.1 $SSH_PORT" -o LogLevel=ERROR "$E2E_USER@127.0.0.1" true \
  || die "ssh to the private sshd failed"

# ---- 3. cluster config for this sshd -------------------------------------------------------------
GCS_PORT="$(free_port)"; CLIENT_PORT="$(free_port)"; DASH_PORT="$(free_port)"
HOST_SITE="$("$HOST_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
# the throwaway user reads the host venv's packages from a hard-linked tree in $WORK (0755): the clone, and
# so .venv, may sit under a directory only its owner can enter (`mktemp -d`, /root), which must stay so.
# Hard links cost no space; a plain copy where they cannot cross filesystems.
SITE="$WORK/site-packages"
cp -al "$HOST_SITE/." "$SITE" 2>/dev/null || { rm -rf "$SITE"; log "hard links failed: copying $HOST_SITE"; cp -a "$HOST_SITE/." "$SITE"; }
# the host's editable install of this project points into the clone; the cluster installs its own
rm -rf "$SITE"/__editable__*latentcomm* "$SITE"/latentcomm-*.dist-info
chmod 755 "$SITE"
runuser -u "$E2E_USER" -- test -r "$SITE/ray/__init__.py" \
  || die "user $E2E_USER cannot read $SITE/ray/__init__.py (is $WORK on a filesystem mounted noexec/nosuid or with odd ACLs?)"
SYS_PY="$(command -v /usr/bin/python3.11 || command -v /usr/bin/python3)"  # not pyenv: /root is private
# the venv gets no pip and no console scripts: a `ray` command that runs the CLI from the host packages
mkdir -p "$WORK/bin"
cat >"$WORK/bin/ray" <<'EOF'
#!/bin/sh
exec "$HOME/latentcomm-venv/bin/python" -c 'import sys; from ray.scripts.scripts import main; sys.argv[0] = "ray"; sys.exit(main())' "$@"
EOF
chmod 755 "$WORK/bin" "$WORK/bin/ray"
"$HOST_PY" - "$REPO/cluster.local.yaml" "$CFG" <<EOF
import sys, yaml
src, dst = sys.argv[1], sys.argv[2]
cfg = yaml.safe_load(open(src))
cfg["cluster_name"] = "$CLUSTER"
cfg["provider"]["head_ip"] = "127.0.0.1"
cfg["provider"]["worker_ips"] = []
cfg["auth"] = {
    "ssh_user": "$E2E_USER",
    "ssh_private_key": "$WORK/id_ed25519",
    # Ray has no ssh port option: reach the private sshd's port through a proxy command
    "ssh_proxy_command": "nc 127.0.0.1 $SSH_PORT",
}
cfg["file_mounts"] = {"~/latentcomm": "$REPO", "~/latentcomm-e2e-bin": "$WORK/bin"}
venv = "~/latentcomm-venv"
pth = venv + "/lib/python3.11/site-packages/_host_packages.pth"
# the cluster file's own venv + PATH steps, then the project's pip install -e from the file mount;
# dependencies come from this machine's .venv (a .pth) instead of the network
cfg["setup_commands"] = [
    f"test -x {venv}/bin/python || $SYS_PY -m venv --without-pip {venv}",
    f"echo $SITE > {pth}",
    cfg["setup_commands"][1],
    f"cp ~/latentcomm-e2e-bin/ray {venv}/bin/ray && chmod 755 {venv}/bin/ray",
    f"{venv}/bin/python -m pip install -q --no-deps --no-build-isolation --no-index -e ~/latentcomm",
]
cfg["head_start_ray_commands"] = [
    "ray stop",
    "ray start --head --port=$GCS_PORT --ray-client-server-port=$CLIENT_PORT --dashboard-port=$DASH_PORT"
    " --dashboard-host=127.0.0.1 --include-dashboard=false --num-cpus=2"
    " --autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats",
]
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
EOF
chmod 644 "$CFG"

# ---- 4. ray up / submit / rsync-down / down ------------------------------------------------------
cd "$REPO"
log "ray up"
timeout 240 "$RAY" up -y --no-config-cache --disable-usage-stats "$CFG" >"$WORK/ray_up.log" 2>&1 || die "ray up failed"
log "ray submit $(basename "$SCRIPT") -- $ARGS"
# shellcheck disable=SC2086  # ARGS is a list of words on purpose
if ! timeout 240 "$RAY" submit --no-config-cache "$CFG" "$SCRIPT" -- $ARGS 2>&1 | tee "$WORK/ray_submit.log" | tail -n 25; then
  die "ray submit failed"
fi
mkdir -p "$WORK/fetched"
"$RAY" rsync-down "$CFG" "~/results/e2e/" "$WORK/fetched/" >"$WORK/rsync_down.log" 2>&1 \
  || die "rsync-down of ~/results/e2e failed"
CSV="$WORK/fetched/results.csv"
[ -s "$CSV" ] || die "no results.csv came back"
ROWS=$(($(wc -l <"$CSV") - 1))
log "results.csv: $ROWS rows (expected $EXPECT_ROWS); header: $(head -n 1 "$CSV")"
[ "$ROWS" = "$EXPECT_ROWS" ] || die "results.csv has $ROWS rows, expected $EXPECT_ROWS"
if [ -n "${E2E_KEEP_RESULTS:-}" ]; then mkdir -p "$E2E_KEEP_RESULTS" && cp -r "$WORK/fetched/." "$E2E_KEEP_RESULTS/"; fi
log "ray down"
timeout 60 "$RAY" down -y "$CFG" >"$WORK/ray_down.log" 2>&1 || die "ray down failed"
rm -f "$CFG"
log "PASS"
