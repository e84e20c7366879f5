# shellcheck shell=bash disable=SC2034
# The real node of the e2e cluster: network namespaces with no route out, containerd with runc
# and gVisor, kubelet, kube-proxy, kube-router (NetworkPolicy), a local OCI registry and the
# "outside world" of test servers. Sourced by up.sh (after the control plane is up) and down.sh;
# see README.md ("The real node").

NODE_NAME="palisade-node"
NODE_NS="palisade-node"
WORLD_NS="palisade-world"
# host <-> node: the node reaches the API server (through a forwarder) and the registry here.
HOST_IF="pal-host"
HOST_IP="10.250.0.1"
NODE_IP="10.250.0.2"
# node <-> world
NODE_WORLD_IF="pal-world"
NODE_WORLD_IP="10.250.1.1"
WORLD_IP="10.250.1.2"
NODE_POD_CIDR="10.245.0.0/24"
# The pods' bridge and CNI network (its name is in libcni's result files, see
# node_host_state_down).
CNI_BRIDGE="cni0"
CNI_NETWORK="palisade"
# Every address of the node's world: links (10.250.x), pods (10.244/14 holds the fake nodes'
# ranges too); the host routes these into the node's link only.
NODE_RANGES="10.244.0.0/14"
NODE_LINKS="10.250.0.0/16"
SERVICE_RANGE="10.96.0.0/16"
# The host's iptables rules for the node, in a chain of their own (PALISADE-NODE, jumped to from
# OUTPUT and FORWARD; created by node_network_up, removed by node_network_down).
HOST_CHAIN="PALISADE-NODE"
# The connmark bit (mangle PREROUTING) of connections that came in from the node's link.
HOST_CONNMARK="0x1000/0x1000"
HOST_RULES=(
  # Anything forwarded from or to the node, and any answer to a connection that came in from
  # the node (marked in mangle PREROUTING), unless it goes back into the link.
  "-m connmark --mark ${HOST_CONNMARK} ! -o ${HOST_IF} -j DROP"
  "-o lo -j RETURN"
  "-o ${HOST_IF} -j RETURN"
  "-d ${NODE_RANGES} -j DROP"
  "-d ${NODE_LINKS} -j DROP"
  "-d ${SERVICE_RANGE} -j DROP"
  "-s ${HOST_IP} -j DROP"
)
# The host never talks to the world's test servers (only the node routes to them): whatever
# would (say, an API server proxy to an Endpoints there) is dropped, not sent on the machine's
# own network. Added to HOST_RULES below, once WORLD_ADDRESSES is set.
# What the node may reach on the host: the API server forwarder and the registry.
HOST_INPUT_CHAIN="PALISADE-NODE-IN"
CLUSTER_DNS_IP="10.96.0.10"
REGISTRY="${HOST_IP}:5000"
# The outside world's test servers: documentation addresses (RFC 5737) and a fake metadata
# service; only the node's routes lead there, and nothing leads further.
# PACKAGES_ADDRESS is the package index (HTTP and HTTPS, a Python package of its own), reached
# by name through the egress gateway (e2e/tests/gateway.rs).
PACKAGES_ADDRESS=192.0.2.30
WORLD_ADDRESSES=(192.0.2.10 192.0.2.20 198.51.100.10 198.51.100.13 203.0.113.10 169.254.169.254
  "${PACKAGES_ADDRESS}")
WORLD_PREFIXES=(192.0.2.0/24 198.51.100.0/24 203.0.113.0/24 169.254.169.254/32)
for a in "${WORLD_ADDRESSES[@]}"; do HOST_RULES+=("-d ${a}/32 -j DROP"); done
WORLD_TCP_PORTS=(80 443 8080)
WORLD_UDP_PORTS=(53 5353)

NODE_DIR="${STATE_DIR}/node"
# Debian's pip wheel (package python3-pip-whl), which the tools image runs pip from.
PIP_WHEELS=/usr/share/python-wheels
# Machine-wide state of the one real node a machine can run (its namespace and link names are
# fixed): the state directory that owns it, and the host's kernel settings the kubelet changes,
# restored by node_network_down.
NODE_RUN="/run/palisade-e2e-node"
# The kubelet's pods live under this cgroup (cgroupRoot), so that cleaning up touches nothing
# else on the machine.
NODE_CGROUP="palisade-e2e"
# Host settings the kubelet sets (protectKernelDefaults: false) and the bridge netfilter switches.
HOST_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
NODE_BIN="${NODE_DIR}/bin"
# Folders with Unix sockets live under NODE_RUN, not the state directory: a socket's path may
# have at most 104-108 characters, and a state directory's real path (e.g. a checkout's target/
# linked into ~/.cache, as in CI) can leave too few. containerd's shim sockets (at most 42),
# containerd's socket, the kubelet's root (its device-plugin and pod-resources sockets) and
# gVisor's root (its control sockets). They belong to the node that owns NODE_RUN.
NODE_SHIM_SOCKETS="${NODE_RUN}/s"
CONTAINERD_SOCK="${NODE_RUN}/containerd.sock"
KUBELET_DIR="${NODE_RUN}/kubelet"
RUNSC_ROOT="${NODE_RUN}/runsc"

# Processes of the node, in start order (down.sh stops them in reverse). Each runs a binary of
# its own name (component_pid checks the executable), copied into NODE_BIN where needed.
NODE_COMPONENTS=(world-servers world-dns api-forwarder registry containerd kubelet kube-proxy kube-router)

# The state directory that owns the machine's real node (/run/palisade-e2e-node/owner), by its
# real path: lib.sh resolves STATE_DIR, and an owner written through a symbolic link must still
# match. Empty when no node is recorded.
node_owner() {
  local owner
  owner="$(cat "${NODE_RUN}/owner" 2>/dev/null || true)"
  [[ -z "${owner}" ]] || realpath -m -- "${owner}"
}

# Whether another state directory, still present, owns the real node: then its processes,
# cgroups, namespaces and host rules are not this one's to touch.
node_owned_elsewhere() {
  local owner
  owner="$(node_owner)"
  [[ -n "${owner}" && "${owner}" != "${STATE_DIR}" && -d "${owner}" ]]
}

# Whether this state directory has (or had) a real node: its node folder, or the owner record.
node_is_ours() {
  [[ -d "${NODE_DIR}" || "$(node_owner)" == "${STATE_DIR}" ]]
}

# Refuses to start the node without what it needs, saying how to get it.
node_preflight() {
  [[ "${EUID}" == 0 ]] || die "the real node needs root (network namespaces, cgroups, mounts, iptables); run as root, or set PALISADE_E2E_NODE=0 for simulated nodes only (the isolation suite then does not run)"
  local missing=() t
  for t in runc iptables ipset conntrack nsenter ip curl python3; do
    command -v "${t}" >/dev/null || missing+=("${t}")
  done
  # The tools image (node_tools_image) carries Debian's Python and pip's wheel.
  [[ -x /usr/bin/python3 ]] || missing+=(/usr/bin/python3)
  compgen -G "${PIP_WHEELS}/pip-*.whl" >/dev/null || missing+=("${PIP_WHEELS}/pip-*.whl")
  ((${#missing[@]} == 0)) ||
    die "the real node needs ${missing[*]}: apt-get install runc iptables ipset conntrack util-linux iproute2 curl python3 python3-pip-whl"
  # One real node per machine: another state directory's node must be stopped first.
  if node_owned_elsewhere; then
    die "the real node of $(node_owner) is running (one per machine); stop it first: PALISADE_E2E_STATE=$(node_owner) e2e/cluster/down.sh"
  fi
  # The node's ranges must be free on this machine: no address, route or resolver in them.
  local range overlap
  for range in "${NODE_RANGES}" "${NODE_LINKS}" "${SERVICE_RANGE}"; do
    overlap="$(ip -4 route show root "${range}" 2>/dev/null | grep -v " dev ${HOST_IF}\b" || true)"
    [[ -z "${overlap}" ]] || die "this machine already routes into ${range} (${overlap%%$'\n'*}); the real node would take it over"
    overlap="$(python3 - "${range}" <<'PY'
import ipaddress, re, subprocess, sys
net = ipaddress.ip_network(sys.argv[1])
found = []
for line in subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout.splitlines():
    m = re.search(r"^\d+: (\S+)\s+inet (\S+)", line)
    if m and m.group(1) != "pal-host" and ipaddress.ip_interface(m.group(2)).ip in net:
        found.append(f"address {m.group(2)} on {m.group(1)}")
for line in open("/etc/resolv.conf"):
    parts = line.split()
    if len(parts) >= 2 and parts[0] == "nameserver":
        try:
            if ipaddress.ip_address(parts[1]) in net:
                found.append(f"resolver {parts[1]}")
        except ValueError:
            pass
print("; ".join(found))
PY
)"
    [[ -z "${overlap}" ]] || die "this machine uses ${range} (${overlap}); the real node needs it free"
  done
}

in_node() { nsenter --net="/run/netns/${NODE_NS}" -- "$@"; }
in_world() { nsenter --net="/run/netns/${WORLD_NS}" -- "$@"; }

# Whether namespace $1 could send a packet anywhere but where the harness allows: a route to any
# public or private address outside the e2e ranges, over IPv4 or IPv6. A route lookup sends
# nothing. Fails closed: a namespace that is missing or cannot be read counts as one with a
# route out (what it says about the route is on stderr).
node_ns_has_route_out() { # <netns>
  if ! ip netns exec "$1" true 2>/dev/null; then
    echo "network namespace $1 is missing or cannot be entered" >&2
    return 0
  fi
  local probe
  for probe in 1.1.1.1 8.8.8.8 10.0.0.1 172.16.0.1 192.168.0.1; do
    ip netns exec "$1" ip -4 route get "${probe}" >/dev/null 2>&1 && return 0
  done
  for probe in 2606:4700::1111 fd00::1; do
    ip netns exec "$1" ip -6 route get "${probe}" >/dev/null 2>&1 && return 0
  done
  # Sampling misses a route to an address it does not try: every route of every table, and
  # the rules that pick the tables, against what the harness itself installs.
  local beyond
  beyond="$(node_ns_routes_beyond "$1")" || beyond="${beyond:-the route check itself failed}"
  if [[ -n "${beyond}" ]]; then
    printf 'network namespace %s: %s\n' "$1" "${beyond}" >&2
    return 0
  fi
  return 1
}

# Prints what in namespace $1's routing is not the harness's own (nothing when all of it is):
# unicast routes only on the harness's links (the link to the host, to the world, the pods'
# bridge) to its own ranges (node links, pods, the world's prefixes), or on loopback, or IPv6
# link-local ones (never forwarded off their link); local, broadcast, multicast, anycast and
# unreachable entries (none sends a packet off the namespace's links); only the kernel's default
# rules. Anything it cannot read or does not know is printed too.
node_ns_routes_beyond() { # <netns>
  python3 - "$1" "eth0 ${NODE_WORLD_IF} ${CNI_BRIDGE}" \
    "${NODE_RANGES} ${NODE_LINKS} ${WORLD_PREFIXES[*]}" <<'PY'
import ipaddress, json, subprocess, sys
ns, devs, ranges = sys.argv[1], set(sys.argv[2].split()), sys.argv[3].split()
allowed = [ipaddress.ip_network(r) for r in ranges]
link_local = ipaddress.ip_network("fe80::/10")
found = []

def read(*args):
    r = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True)
    if r.returncode != 0:
        # A kernel without IPv6 has no IPv6 routes.
        if args[0] == "-6" and "not supported" in r.stderr:
            return []
        found.append(f"cannot read `ip {' '.join(args)}`: {r.stderr.strip()}")
        return []
    try:
        return json.loads(r.stdout or "[]")
    except ValueError:
        found.append(f"cannot parse `ip -j {' '.join(args)}`")
        return []

for family in ("-4", "-6"):
    for route in read(family, "route", "show", "table", "all"):
        kind = route.get("type", "unicast")
        if kind in ("local", "broadcast", "multicast", "anycast", "unreachable", "blackhole", "prohibit"):
            continue
        dst = route.get("dst", "")
        try:
            net = ipaddress.ip_network(
                {"-4": "0.0.0.0/0", "-6": "::/0"}[family] if dst == "default" else dst, strict=False)
        except ValueError:
            net = None
        via = [route["dev"]] if "dev" in route else [h.get("dev") for h in route.get("nexthops", [])]
        ok = kind == "unicast" and net is not None and bool(via) and (
            # Loopback and IPv6 link-local never leave the namespace's links.
            all(d == "lo" for d in via)
            or (net.version == 6 and net.subnet_of(link_local))
            or (all(d in devs for d in via)
                and any(net.version == a.version and net.subnet_of(a) for a in allowed)))
        if not ok:
            found.append(f"route {json.dumps(route, sort_keys=True)}")
    # The kernel's own rules: local, main and (IPv4) default, for every source.
    expected = {(0, "local"), (32766, "main"), (32767, "default")}
    for rule in read(family, "rule", "show"):
        if not (set(rule) == {"priority", "src", "table"} and rule["src"] == "all"
                and (rule["priority"], rule["table"]) in expected):
            found.append(f"rule {json.dumps(rule, sort_keys=True)}")
print("; ".join(found))
PY
}

# Creates the namespaces and links, or refuses when one of them could reach out.
node_network_up() {
  local ns
  mkdir -p "${NODE_RUN}"
  printf '%s\n' "${STATE_DIR}" >"${NODE_RUN}/owner"
  # The host's settings before the kubelet changes them (kept from a first, failed start).
  if [[ ! -f "${NODE_RUN}/sysctls" ]]; then
    local k
    for k in "${HOST_SYSCTLS[@]}"; do
      sysctl -n "${k}" >/dev/null 2>&1 && printf '%s=%s\n' "${k}" "$(sysctl -n "${k}")"
    done >"${NODE_RUN}/sysctls.tmp"
    mv "${NODE_RUN}/sysctls.tmp" "${NODE_RUN}/sysctls"
  fi
  # The host's rules first, so nothing of the node is ever up without them.
  node_host_rules_up
  for ns in "${NODE_NS}" "${WORLD_NS}"; do
    ip netns del "${ns}" 2>/dev/null || true
    ip netns add "${ns}"
    # IPv4 only: no router advertisements, no autoconfigured addresses.
    ip netns exec "${ns}" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "${ns}" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
    ip netns exec "${ns}" ip link set lo up
  done
  ip link del "${HOST_IF}" 2>/dev/null || true
  ip link add "${HOST_IF}" type veth peer name eth0 netns "${NODE_NS}"
  sysctl -qw "net.ipv6.conf.${HOST_IF}.disable_ipv6=1"
  # Packets from the link with a source it does not route back there are dropped.
  sysctl -qw "net.ipv4.conf.${HOST_IF}.rp_filter=1"
  ip addr add "${HOST_IP}/30" dev "${HOST_IF}"
  ip link set "${HOST_IF}" up
  # The host never forwards what comes from the node (it has nowhere to go), answers the node's
  # ranges only through the link (pods and the node reach the API server forwarder here), and
  # drops anything else for those ranges or from its own end of the link: a reply can never
  # leave by the machine's default route.
  local range
  for range in "${NODE_RANGES}" "${NODE_LINKS}" "${SERVICE_RANGE}"; do
    ip route replace "${range}" via "${NODE_IP}" dev "${HOST_IF}"
  done
  ip netns exec "${NODE_NS}" ip addr add "${NODE_IP}/30" dev eth0
  ip netns exec "${NODE_NS}" ip link set eth0 up
  ip netns exec "${NODE_NS}" ip link add "${NODE_WORLD_IF}" type veth peer name eth0 netns "${WORLD_NS}"
  ip netns exec "${NODE_NS}" ip addr add "${NODE_WORLD_IP}/30" dev "${NODE_WORLD_IF}"
  ip netns exec "${NODE_NS}" ip link set "${NODE_WORLD_IF}" up
  ip netns exec "${WORLD_NS}" ip addr add "${WORLD_IP}/30" dev eth0
  ip netns exec "${WORLD_NS}" ip link set eth0 up
  local a p
  for a in "${WORLD_ADDRESSES[@]}"; do
    ip netns exec "${WORLD_NS}" ip addr add "${a}/32" dev lo
  done
  for p in "${WORLD_PREFIXES[@]}"; do
    ip netns exec "${NODE_NS}" ip route add "${p}" via "${WORLD_IP}"
  done
  ip netns exec "${WORLD_NS}" ip route add 10.244.0.0/14 via "${NODE_WORLD_IP}"
  ip netns exec "${WORLD_NS}" ip route add 10.250.0.0/24 via "${NODE_WORLD_IP}"
  ip netns exec "${NODE_NS}" sysctl -qw net.ipv4.ip_forward=1
  # Pods reach the API server forwarder on the host's end of the link as the node. Only that
  # port: the registry there is the node's (containerd's) alone, and the host accepts it only
  # from the node's own address (node_host_rules_up), never from a pod's.
  ip netns exec "${NODE_NS}" iptables -t nat -A POSTROUTING -s "${NODE_RANGES}" -d "${HOST_IP}" \
    -p tcp --dport "${APISERVER_PORT}" -j MASQUERADE
  # Bridged pod traffic goes through iptables (kube-proxy, kube-router): without it pods on
  # the bridge would reach each other unfiltered.
  command -v modprobe >/dev/null && modprobe br_netfilter 2>/dev/null
  ip netns exec "${NODE_NS}" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  [[ "$(ip netns exec "${NODE_NS}" sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null)" == 1 ]] ||
    die "bridged traffic does not go through iptables in ${NODE_NS} (br_netfilter missing?); NetworkPolicy could not hold"
  # The node is IPv4 only, and kube-router filters IPv4 only: bridged IPv6 (pods' link-local
  # addresses) is dropped, so no pod reaches another over IPv6 around the NetworkPolicies.
  ip netns exec "${NODE_NS}" sysctl -qw net.bridge.bridge-nf-call-ip6tables=1 2>/dev/null || true
  [[ "$(ip netns exec "${NODE_NS}" sysctl -n net.bridge.bridge-nf-call-ip6tables 2>/dev/null)" == 1 ]] ||
    die "bridged IPv6 does not go through ip6tables in ${NODE_NS} (br_netfilter missing?); it could not be dropped"
  ip netns exec "${NODE_NS}" ip6tables -P FORWARD DROP ||
    die "cannot drop bridged IPv6 in ${NODE_NS} (ip6tables)"
  for ns in "${NODE_NS}" "${WORLD_NS}"; do
    if node_ns_has_route_out "${ns}"; then
      die "network namespace ${ns} has a route out of the machine; refusing to start the node"
    fi
  done
  # And the host sends what is meant for the node's ranges into the link, nowhere else.
  [[ "$(ip -4 route get 10.245.0.9 2>/dev/null)" == *" dev ${HOST_IF} "* ]] ||
    die "the host does not route the node's pod range into ${HOST_IF}; refusing to start the node"
}

node_network_down() {
  if node_owned_elsewhere; then
    echo "the real node belongs to $(node_owner): left alone" >&2
    return 0
  fi
  ip netns del "${NODE_NS}" 2>/dev/null || true
  ip netns del "${WORLD_NS}" 2>/dev/null || true
  # The host's routes into the node's ranges all go through this link: they go with it (a route
  # deleted by its prefix alone could be one of the machine's own).
  ip link del "${HOST_IF}" 2>/dev/null || true
  node_host_rules_down
  # The host's kernel settings as they were before the kubelet ran.
  if [[ -f "${NODE_RUN}/sysctls" ]]; then
    sysctl -q -p "${NODE_RUN}/sysctls" >/dev/null 2>&1 || true
  fi
  # (The kubelet's pod volumes are mounted under it: never delete through a mount.)
  unmount_under "${NODE_RUN}"
  rm -rf "${NODE_RUN}"
}

node_host_rules_up() {
  node_host_rules_down
  iptables -N "${HOST_CHAIN}"
  local rule
  for rule in "${HOST_RULES[@]}"; do
    # shellcheck disable=SC2086 # a rule is words
    iptables -A "${HOST_CHAIN}" ${rule}
  done
  iptables -I OUTPUT -j "${HOST_CHAIN}"
  iptables -I FORWARD -j "${HOST_CHAIN}"
  # The host never forwards into the link (the chain lets packets going into it pass, for the
  # host's own): with ip_forward on, the machine's network could otherwise reach the pods.
  iptables -I FORWARD -o "${HOST_IF}" -j DROP
  iptables -t mangle -I PREROUTING -i "${HOST_IF}" -j CONNMARK --set-mark "${HOST_CONNMARK}"
  iptables -N "${HOST_INPUT_CHAIN}"
  iptables -A "${HOST_INPUT_CHAIN}" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  iptables -A "${HOST_INPUT_CHAIN}" -d "${HOST_IP}" -p tcp --dport "${APISERVER_PORT}" -j ACCEPT
  # The registry from the node itself (containerd) only; pods reach it as nobody (no pod's
  # traffic to it is masqueraded as the node's), so none can push or pull there.
  iptables -A "${HOST_INPUT_CHAIN}" -s "${NODE_IP}" -d "${HOST_IP}" -p tcp --dport "${REGISTRY##*:}" \
    -j ACCEPT
  iptables -A "${HOST_INPUT_CHAIN}" -j DROP
  iptables -I INPUT -i "${HOST_IF}" -j "${HOST_INPUT_CHAIN}"
}

node_host_rules_down() {
  while iptables -t mangle -D PREROUTING -i "${HOST_IF}" -j CONNMARK --set-mark "${HOST_CONNMARK}" \
    2>/dev/null; do :; done
  while iptables -D INPUT -i "${HOST_IF}" -j "${HOST_INPUT_CHAIN}" 2>/dev/null; do :; done
  iptables -F "${HOST_INPUT_CHAIN}" 2>/dev/null || true
  iptables -X "${HOST_INPUT_CHAIN}" 2>/dev/null || true
  while iptables -D OUTPUT -j "${HOST_CHAIN}" 2>/dev/null; do :; done
  while iptables -D FORWARD -j "${HOST_CHAIN}" 2>/dev/null; do :; done
  while iptables -D FORWARD -o "${HOST_IF}" -j DROP 2>/dev/null; do :; done
  iptables -F "${HOST_CHAIN}" 2>/dev/null || true
  iptables -X "${HOST_CHAIN}" 2>/dev/null || true
}

# Unmounts everything under the node's directory (pods' volumes, containerd's snapshots), the
# deepest first, so removing the state directory removes nothing else.
node_unmount() {
  unmount_under "${NODE_DIR}"
  node_owned_elsewhere || unmount_under "${NODE_RUN}"
}

# Unmounts everything mounted at or under folder $1, the deepest first.
unmount_under() {
  [[ -d "$1" ]] || return 0
  local m
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts |
    sort -r | while read -r m; do
    umount -l "${m}" 2>/dev/null || true
  done
}

# Starts component $2 (binary $3) in network namespace $1 (empty: the host's), with up.sh's
# pid and log conventions.
node_start() { # <netns or ""> <component> <binary> <args...>
  local ns="$1"
  shift
  local -a LAUNCH_PREFIX=()
  [[ -z "${ns}" ]] || LAUNCH_PREFIX=(nsenter "--net=/run/netns/${ns}" --)
  # The usual umask, whatever up.sh's: containerd creates containers' root folders, which their
  # non-root users must be able to enter.
  local LAUNCH_UMASK=022
  start_binary "$@"
}

# A copy of a binary under the component's name (the probe plays several parts).
node_binary() { # <component> <source binary>
  mkdir -p "${NODE_BIN}"
  cp -f "$2" "${NODE_BIN}/$1"
  printf '%s\n' "${NODE_BIN}/$1"
}

node_containerd_config() {
  local d="${NODE_DIR}/containerd"
  mkdir -p "${d}/root" "${d}/state" "${d}/certs.d" "${NODE_DIR}/cni/net.d" "${NODE_DIR}/runsc" \
    "${RUNSC_ROOT}" "${KUBELET_DIR}"
  # Every registry the examples and tests name is mirrored to the local one; if the mirror
  # lacks an image, the fall-back to the real registry fails at once (no route out).
  local r
  # `_default`: every other registry too.
  for r in _default docker.io ghcr.io quay.io registry.k8s.io gcr.io "${REGISTRY}"; do
    mkdir -p "${d}/certs.d/${r}"
    cat >"${d}/certs.d/${r}/hosts.toml" <<TOML
server = "http://${REGISTRY}"
[host."http://${REGISTRY}"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
TOML
  done
  cat >"${NODE_DIR}/runsc/runsc.toml" <<TOML
log_path = "${LOG_DIR}/runsc/%ID%/shim.log"
log_level = "info"
binary_name = "${BIN_DIR}/runsc"
root = "${RUNSC_ROOT}"
[runsc_config]
  platform = "systrap"
  debug-log = "${LOG_DIR}/runsc/%ID%/"
TOML
  # gVisor applying the pod's seccomp profile too (a second RuntimeClass, gvisor-seccomp).
  sed 's/^\[runsc_config\]$/[runsc_config]\n  oci-seccomp = "true"/' \
    "${NODE_DIR}/runsc/runsc.toml" >"${NODE_DIR}/runsc/runsc-seccomp.toml"
  mkdir -p "${LOG_DIR}/runsc"
  mkdir -p "${NODE_SHIM_SOCKETS}"
  cat >"${d}/config.toml" <<TOML
version = 3
root = "${d}/root"
state = "${d}/state"
oom_score = 0
[grpc]
  address = "${CONTAINERD_SOCK}"
[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"
# The node's runtime state stays off the host's own paths wherever containerd lets it: the
# shims' sockets (runc's shim honours this; the runsc shim does not, see node_host_state_down),
# no NRI socket (/var/run/nri), and runc's state (below).
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "${NODE_SHIM_SOCKETS}"
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # Pods' network namespaces live in the node's folder (unmounted with it), not /run/netns.
  netns_mounts_under_state_dir = true
  # A container's oom_score_adj is never below containerd's (0): lowering one needs
  # CAP_SYS_RESOURCE, which this machine does not grant.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
        # Not /run/containerd/runc.
        Root = "${d}/runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc]
      runtime_type = "io.containerd.runsc.v1"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = "${NODE_DIR}/runsc/runsc.toml"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc-seccomp]
      runtime_type = "io.containerd.runsc.v1"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runsc-seccomp.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = "${NODE_DIR}/runsc/runsc-seccomp.toml"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["${BIN_DIR}/cni"]
    conf_dir = "${NODE_DIR}/cni/net.d"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "${REGISTRY}/pause:1"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "${d}/certs.d"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  # exec, attach and port-forward: the kubelet, in the same network namespace, proxies them;
  # no pod can reach the streaming server on loopback (it could on the node's address).
  stream_server_address = "127.0.0.1"
TOML
  cat >"${NODE_DIR}/cni/net.d/10-palisade.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "${CNI_NETWORK}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${CNI_BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${NODE_POD_CIDR}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "${NODE_DIR}/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

# Kills what the node left running: containers (their cgroups are under NODE_CGROUP), the shims
# and gVisor sandboxes of this node's containerd (their command lines name NODE_DIR).
node_kill_leftovers() {
  local p round killed
  # Again until a pass finds nothing: a shim killed mid-start may leave a container behind.
  for round in 1 2 3 4 5; do
    killed=0
    for p in /proc/[0-9]*; do
      p="${p#/proc/}"
      [[ "${p}" == "$$" ]] && continue
      # Zombies wait for their parent; there is nothing left to kill.
      [[ "$(awk '/^State:/ {print $2}' "/proc/${p}/status" 2>/dev/null)" == Z ]] && continue
      if grep -qsE ":/${NODE_CGROUP}(/|\$)" "/proc/${p}/cgroup" ||
        tr '\0' ' ' 2>/dev/null <"/proc/${p}/cmdline" | grep -qF -- "${STATE_DIR}/"; then
        kill -KILL "${p}" 2>/dev/null && killed=1
      fi
    done
    ((killed)) || break
    sleep 0.5
  done
  [[ -n "${round}" ]]
}

# Stops what is left of this state directory's node. When another state directory owns the
# machine's node, its processes, cgroups, namespaces and host rules are left alone; only mounts
# under this directory's own node folder are undone (so that it can be deleted).
node_down() {
  if node_owned_elsewhere; then
    echo "the real node belongs to $(node_owner): left alone" >&2
    node_unmount
    return 0
  fi
  [[ -d "${NODE_DIR}" ]] || {
    node_network_down
    return 0
  }
  node_kill_leftovers
  sleep 0.5
  node_unmount
  node_cgroups_down
  node_host_state_down
  node_network_down
}

# Removes what the node's runtime wrote to the host's own paths, where no setting moves it, and
# only what provably came from this node: files named after the sandbox and container IDs of
# this node's containerd (random, 64 hex digits, read from its root and state folders).
# - /var/lib/cni/results: libcni's cache (containerd's CRI has no setting for its folder),
#   this node's networks only (CNI_NETWORK on eth0, containerd's cni-loopback on lo);
# - /run/containerd/s: the runsc shim's sockets (the folder is fixed in the containerd library
#   it is built with; runc's shim uses socket_dir), named by a hash of this containerd's socket
#   path, namespace and ID;
# - /var/log/containers: the kubelet's links (a fixed folder) into this node's pod logs.
node_host_state_down() {
  local id path h
  local -a ids=()
  mapfile -t ids < <(find "${NODE_DIR}/containerd/root" "${NODE_DIR}/containerd/state" \
    -mindepth 1 -maxdepth 3 -type d -regextype posix-extended -regex '.*/[0-9a-f]{64}' \
    -printf '%f\n' 2>/dev/null | sort -u)
  for id in "${ids[@]}"; do
    rm -f "/var/lib/cni/results/${CNI_NETWORK}-${id}-eth0" "/var/lib/cni/results/cni-loopback-${id}-lo"
    for path in "${CONTAINERD_SOCK}/k8s.io/${id}" "${CONTAINERD_SOCK}/k8s.io/${id}/debug"; do
      h="$(printf '%s' "${path}" | sha256sum)"
      h="/run/containerd/s/${h%% *}"
      [[ ! -S "${h}" ]] || rm -f "${h}"
    done
  done
  find /var/log/containers -maxdepth 1 -type l -lname "${NODE_DIR}/pod-logs/*" -delete 2>/dev/null ||
    true
}

# The kubelet's cgroup root, in every hierarchy (it must exist before the kubelet starts).
node_cgroups_up() {
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -f "${h}cgroup.procs" ]] || continue
    mkdir -p "${h}${NODE_CGROUP}"
    if [[ -f "${h}cpuset.cpus" && -z "$(cat "${h}${NODE_CGROUP}/cpuset.cpus" 2>/dev/null)" ]]; then
      cat "${h}cpuset.cpus" >"${h}${NODE_CGROUP}/cpuset.cpus"
      cat "${h}cpuset.mems" >"${h}${NODE_CGROUP}/cpuset.mems"
    fi
  done
}

# Removes the node's cgroups (empty once its processes are gone), the deepest first.
node_cgroups_down() {
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d "${h}${NODE_CGROUP}" ]] || continue
    find "${h}${NODE_CGROUP}" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# An image of one static binary (in /usr/local/bin), pushed to the local registry:
# <repository:tag> <binary> <entrypoint...>. With IMAGE_AS the binary is installed under that
# name; with IMAGE_CHECKS (a file) the demo agent's checks go to /etc/palisade-demo/checks.
node_image() {
  local ref="$1" binary="$2" work
  shift 2
  work="$(mktemp -d "${NODE_DIR}/image.XXXXXX")"
  mkdir -p "${work}/root/usr/local/bin" "${work}/root/tmp" "${work}/root/etc/palisade-demo" \
    "${work}/root/opt/probe/secret" "${work}/root/opt/probe/scratch"
  cp "${binary}" "${work}/root/usr/local/bin/${IMAGE_AS:-}"
  [[ -z "${IMAGE_CHECKS:-}" ]] || cp "${IMAGE_CHECKS}" "${work}/root/etc/palisade-demo/checks"
  # For the isolation suite: a file a deniedPaths mask must hide, and a folder anyone may write
  # to, so that a write there fails only because the root filesystem is read-only.
  echo "a file of the image" >"${work}/root/opt/probe/secret/file.txt"
  # Readable by the sandboxes' non-root users (mktemp made the folder private).
  chmod -R a+rX,go-w "${work}/root"
  chmod 1777 "${work}/root/tmp" "${work}/root/opt/probe/scratch"
  tar --owner=0 --group=0 --numeric-owner -C "${work}/root" -cf "${work}/layer.tar" .
  local entry
  entry="$(IFS=,; echo "$*")"
  "${BIN_DIR}/crane" append --insecure --platform linux/amd64 -f "${work}/layer.tar" \
    -t "${REGISTRY}/${ref}" >/dev/null 2>>"${LOG_DIR}/crane.log"
  "${BIN_DIR}/crane" mutate --insecure --entrypoint="${entry}" \
    --env PATH=/usr/local/bin:/usr/bin:/bin "${REGISTRY}/${ref}" >/dev/null 2>>"${LOG_DIR}/crane.log"
  rm -rf "${work}"
}

# The world's own certificate authority and the package index's certificate (the names it
# serves under: packages.example.com, and rebind.example.com, whose answers include the
# metadata address). Made fresh for each node; the tools image trusts the authority.
WORLD_PKI="${NODE_DIR}/world-pki"
node_world_pki() {
  mkdir -p "${WORLD_PKI}"
  local d="${WORLD_PKI}"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
    -subj "/CN=palisade-e2e world CA" -keyout "${d}/ca.key" -out "${d}/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -subj "/CN=packages.example.com" -keyout "${d}/packages.key" -out "${d}/packages.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:packages.example.com,DNS:rebind.example.com" \
    >"${d}/packages.ext"
  openssl x509 -req -in "${d}/packages.csr" -CA "${d}/ca.crt" -CAkey "${d}/ca.key" \
    -CAcreateserial -days 2 -extfile "${d}/packages.ext" -out "${d}/packages.crt" 2>/dev/null
  chmod 600 "${d}"/*.key
}

# An image with the tools an agent uses to fetch software, pushed to the local registry as
# <repository:tag>: Debian's curl and python3 (with the standard library and the C libraries
# they link, at the host's paths), pip unpacked from Debian's wheel into /opt/pip (PYTHONPATH),
# the probe, and the world's certificate authority in /etc/palisade-e2e/world-ca.crt.
# Entrypoint python3.
node_tools_image() {
  local ref="$1" work lib f pyver
  work="$(mktemp -d "${NODE_DIR}/image.XXXXXX")"
  pyver="$(readlink -f /usr/bin/python3)"
  mkdir -p "${work}/root/usr/bin" "${work}/root/usr/local/bin" "${work}/root/usr/lib" \
    "${work}/root/tmp" "${work}/root/opt/pip" "${work}/root/etc/palisade-e2e"
  cp "${pyver}" "${work}/root/usr/bin/"
  ln -s "$(basename "${pyver}")" "${work}/root/usr/bin/python3"
  cp /usr/bin/curl "${work}/root/usr/bin/"
  cp "${BIN_DIR}/probe" "${work}/root/usr/local/bin/probe"
  cp "${WORLD_PKI}/ca.crt" "${work}/root/etc/palisade-e2e/world-ca.crt"
  # The standard library, without its tests and the GUI and build tooling.
  tar -C /usr/lib -cf - --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter \
    --exclude=turtledemo --exclude=ensurepip --exclude=lib2to3 --exclude=config-* \
    "$(basename "${pyver}")" | tar -C "${work}/root/usr/lib" -xf -
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$(compgen -G "${PIP_WHEELS}/pip-*.whl" | head -n 1)" "${work}/root/opt/pip"
  "${pyver}" -m compileall -q "${work}/root/opt/pip" >/dev/null
  for f in "${pyver}" /usr/bin/curl "${work}/root/usr/lib/$(basename "${pyver}")"/lib-dynload/*.so; do
    for lib in $(ldd "${f}" 2>/dev/null | grep -oE '/[^ ]+'); do
      [[ -e "${work}/root${lib}" ]] && continue
      mkdir -p "${work}/root$(dirname "${lib}")"
      cp -L "${lib}" "${work}/root${lib}"
    done
  done
  chmod -R a+rX,go-w "${work}/root"
  chmod 1777 "${work}/root/tmp"
  tar --owner=0 --group=0 --numeric-owner -C "${work}/root" -cf "${work}/layer.tar" .
  "${BIN_DIR}/crane" append --insecure --platform linux/amd64 -f "${work}/layer.tar" \
    -t "${REGISTRY}/${ref}" >/dev/null 2>>"${LOG_DIR}/crane.log"
  "${BIN_DIR}/crane" mutate --insecure --entrypoint=/usr/bin/python3 \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env PYTHONPATH=/opt/pip --env HOME=/tmp \
    "${REGISTRY}/${ref}" >/dev/null 2>>"${LOG_DIR}/crane.log"
  rm -rf "${work}"
}

# The operator's image, as the Dockerfile makes it (the release binary in /usr/local/bin with the
# C libraries it links, no shell, user 65532), pushed to the local registry: <repository:tag>
# <binary>. Sandbox pods on the real node run it as their isolation check.
node_operator_image() {
  local ref="$1" binary="$2" work lib
  work="$(mktemp -d "${NODE_DIR}/image.XXXXXX")"
  mkdir -p "${work}/root/usr/local/bin" "${work}/root/tmp"
  cp "${binary}" "${work}/root/usr/local/bin/palisade"
  # The shared libraries and the dynamic loader, at the paths the binary looks for them.
  for lib in $(ldd "${binary}" | grep -oE '/[^ ]+'); do
    mkdir -p "${work}/root$(dirname "${lib}")"
    cp -L "${lib}" "${work}/root${lib}"
  done
  chmod -R a+rX,go-w "${work}/root"
  chmod 1777 "${work}/root/tmp"
  tar --owner=0 --group=0 --numeric-owner -C "${work}/root" -cf "${work}/layer.tar" .
  # Built under a scratch tag and tagged <ref> only once complete: pods of the chart may be
  # pulling <ref> already, and one that pulled between the append and the mutate got an image
  # without its entrypoint and kept it (IfNotPresent).
  "${BIN_DIR}/crane" append --insecure --platform linux/amd64 -f "${work}/layer.tar" \
    -t "${REGISTRY}/${ref}-building" >/dev/null 2>>"${LOG_DIR}/crane.log"
  "${BIN_DIR}/crane" mutate --insecure --entrypoint=/usr/local/bin/palisade --user 65532:65532 \
    --env PATH=/usr/local/bin:/usr/bin:/bin -t "${REGISTRY}/${ref}" "${REGISTRY}/${ref}-building" \
    >/dev/null 2>>"${LOG_DIR}/crane.log"
  rm -rf "${work}"
}

node_up() {
  say "starting the real node ${NODE_NAME} (containerd ${CONTAINERD_VERSION}, gVisor, kube-router ${KUBE_ROUTER_VERSION})"
  mkdir -p "${NODE_DIR}" "${NODE_BIN}"
  node_network_up
  local ports="" a p
  for a in "${WORLD_ADDRESSES[@]}"; do
    [[ "${a}" == 169.254.169.254 || "${a}" == "${PACKAGES_ADDRESS}" ]] && continue
    for p in "${WORLD_TCP_PORTS[@]}"; do ports+="${ports:+,}${a}:${p}"; done
  done
  local udp=""
  for a in "${WORLD_ADDRESSES[@]}"; do
    [[ "${a}" == 169.254.169.254 || "${a}" == "${PACKAGES_ADDRESS}" ]] && continue
    for p in "${WORLD_UDP_PORTS[@]}"; do udp+="${udp:+,}${a}:${p}"; done
  done
  node_world_pki
  node_start "${WORLD_NS}" world-servers "$(node_binary world-servers "${BIN_DIR}/probe")" \
    serve --tcp="${ports}" --udp="${udp}" --http=169.254.169.254:80 \
    --packages="${PACKAGES_ADDRESS}" --packages-cert="${WORLD_PKI}/packages.crt" \
    --packages-key="${WORLD_PKI}/packages.key"
  node_start "" api-forwarder "$(node_binary api-forwarder "${BIN_DIR}/probe")" \
    forward "${HOST_IP}:${APISERVER_PORT}" "127.0.0.1:${APISERVER_PORT}"

  mkdir -p "${NODE_DIR}/registry"
  cat >"${NODE_DIR}/registry.yaml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: ${NODE_DIR}/registry}
  delete: {enabled: true}
http:
  addr: ${REGISTRY}
YAML
  node_start "" registry "${BIN_DIR}/registry" serve "${NODE_DIR}/registry.yaml"
  wait_for registry "the registry at ${REGISTRY}" curl -fsS "http://${REGISTRY}/v2/"
  node_image pause:1 "${BIN_DIR}/probe" /usr/local/bin/probe pause
  node_image palisade-e2e/probe:1 "${BIN_DIR}/probe" /usr/local/bin/probe check
  node_image "coredns:${COREDNS_VERSION}" "${BIN_DIR}/coredns" /usr/local/bin/coredns
  node_tools_image palisade-e2e/tools:1
  sed "s/@WORLD_IP@/${WORLD_IP}/g" "${CLUSTER_DIR}/node/world.Corefile" >"${NODE_DIR}/world.Corefile"
  node_start "${WORLD_NS}" world-dns "$(node_binary world-dns "${BIN_DIR}/coredns")" \
    -conf "${NODE_DIR}/world.Corefile"

  node_containerd_config
  PATH="${BIN_DIR}:${PATH}" node_start "${NODE_NS}" containerd "${BIN_DIR}/containerd" \
    --config "${NODE_DIR}/containerd/config.toml"
  wait_for containerd "containerd's socket" test -S "${CONTAINERD_SOCK}"
}

node_kubernetes() {
  cat >>"${PKI}/openssl.cnf" <<CNF
[v3_kubelet]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:${NODE_IP},DNS:${NODE_NAME}
CNF
  issue kubelet-serving "/CN=${NODE_NAME}" v3_kubelet
  issue kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" v3_client
  issue kube-proxy "/CN=system:kube-proxy" v3_client
  # A test component: kube-router reads pods, namespaces, nodes and NetworkPolicies.
  issue kube-router "/O=system:masters/CN=palisade-e2e-kube-router" v3_client
  local c
  for c in kubelet kube-proxy kube-router; do
    API_URL="https://${HOST_IP}:${APISERVER_PORT}" write_kubeconfig "${CONF}/${c}.kubeconfig" "${c}"
  done
  printf 'nameserver %s\n' "${WORLD_IP}" >"${NODE_DIR}/resolv.conf"
  mkdir -p "${KUBELET_DIR}/seccomp/palisade-e2e"
  # A Localhost seccomp profile for the isolation suite: everything allowed but personality(2),
  # which fails with EPERM (a call the runtimes' default profiles allow).
  cat >"${KUBELET_DIR}/seccomp/palisade-e2e/deny-personality.json" <<JSON
{"defaultAction": "SCMP_ACT_ALLOW",
 "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
JSON
  cat >"${CONF}/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: ${PKI}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
# Pods under a cgroup of their own: cleaning up kills nothing else of the machine.
cgroupRoot: /${NODE_CGROUP}
# This machine has cgroup v1 only.
failCgroupV1: false
failSwapOn: false
# Lowering a score needs CAP_SYS_RESOURCE, which this machine does not grant.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
clusterDNS: [${CLUSTER_DNS_IP}]
clusterDomain: cluster.local
resolvConf: ${NODE_DIR}/resolv.conf
serializeImagePulls: false
# The machine's disk is shared: never evict for it, never collect images.
evictionHard: {memory.available: "100Mi"}
imageGCHighThresholdPercent: 100
protectKernelDefaults: false
makeIPTablesUtilChains: true
maxPods: 60
podLogsDir: ${NODE_DIR}/pod-logs
YAML
  node_cgroups_up
  node_start "${NODE_NS}" kubelet "${BIN_DIR}/kubelet" \
    --config="${CONF}/kubelet.yaml" \
    --kubeconfig="${CONF}/kubelet.kubeconfig" \
    --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" \
    --root-dir="${KUBELET_DIR}" \
    --cert-dir="${KUBELET_DIR}/pki" \
    --node-labels="palisade.dev/runtime=gvisor,palisade.dev/node=real" \
    --v="${VERBOSITY}"
  wait_for kubelet "node ${NODE_NAME} to register" "${KUBECTL[@]}" get node "${NODE_NAME}"

  cat >"${CONF}/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${CONF}/kube-proxy.kubeconfig}
hostnameOverride: ${NODE_NAME}
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: ${NODE_POD_CIDR}
# Leave the kernel's conntrack settings alone (they are the machine's).
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  node_start "${NODE_NS}" kube-proxy "${BIN_DIR}/kube-proxy" --config="${CONF}/kube-proxy.yaml" \
    --v="${VERBOSITY}"
  node_start "${NODE_NS}" kube-router "${BIN_DIR}/kube-router" \
    --kubeconfig="${CONF}/kube-router.kubeconfig" \
    --hostname-override="${NODE_NAME}" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --enable-cni=false --enable-ipv6=false \
    --health-port=0 --metrics-port=0 \
    --v="${VERBOSITY}"
  wait_for kubelet "node ${NODE_NAME} to be Ready" node_ready

  # The cluster DNS runs on the real node (kube-system asks for it).
  "${KUBECTL[@]}" annotate --overwrite namespace kube-system \
    scheduler.alpha.kubernetes.io/node-selector=palisade.dev/node=real >/dev/null
  sed -e "s/@WORLD_IP@/${WORLD_IP}/g" -e "s/@REGISTRY@/${REGISTRY}/g" \
    -e "s/@COREDNS_VERSION@/${COREDNS_VERSION}/g" -e "s/@CLUSTER_DNS_IP@/${CLUSTER_DNS_IP}/g" \
    "${CLUSTER_DIR}/node/coredns.yaml" >"${CONF}/coredns.yaml"
  "${KUBECTL[@]}" apply -f "${CONF}/coredns.yaml" >/dev/null
  wait_for kubelet "the cluster DNS (kube-system/coredns) to be available" \
    "${KUBECTL[@]}" -n kube-system wait --for=condition=Available deployment/coredns --timeout=5s
}

# Once everything runs (kube-proxy, kube-router and CNI have changed the node's tables), checks
# again that nothing can leave: neither namespace has a route out, and the host sends every
# test range, and nothing else of the node's, into the link.
node_network_check() {
  local ns a
  for ns in "${NODE_NS}" "${WORLD_NS}"; do
    node_ns_has_route_out "${ns}" &&
      fail "" "network namespace ${ns} has a route out of the machine after the node started"
    ip netns exec "${ns}" ip -4 route get 10.255.255.53 >/dev/null 2>&1 &&
      fail "" "network namespace ${ns} has a route to the machine's resolver"
  done
  for a in 10.245.0.9 10.96.0.10 10.250.2.11 10.247.0.1; do
    [[ "$(ip -4 route get "${a}" 2>/dev/null)" == *" dev ${HOST_IF} "* ]] ||
      fail "" "the host does not route ${a} into ${HOST_IF}"
  done
  iptables -C OUTPUT -j "${HOST_CHAIN}" 2>/dev/null &&
    iptables -C FORWARD -j "${HOST_CHAIN}" 2>/dev/null &&
    iptables -C FORWARD -o "${HOST_IF}" -j DROP 2>/dev/null &&
    iptables -C INPUT -i "${HOST_IF}" -j "${HOST_INPUT_CHAIN}" 2>/dev/null ||
    fail "" "the host's ${HOST_CHAIN} rules are missing"
}

node_ready() {
  [[ "$("${KUBECTL[@]}" get node "${NODE_NAME}" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
