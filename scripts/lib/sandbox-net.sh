# Sourced by scripts/lab and scripts/vagrant-lxc: the network sandbox test machines live in.
#
# A network namespace with a bridge the machines are plugged into. The only way out is slirp4netns
# (a user-space NAT on tap0, touching neither the host's interfaces nor its firewall), and an egress
# firewall lets through only TCP 80/443 to Debian's mirror, so apt works in the machines and nothing
# else leaves. The root namespace never sends a packet to the machines (the project's network rule):
# whatever talks to them runs inside the namespace, and a forwarder on the host's loopback opens
# each connection's upstream side from inside.
#
# The caller defines log and die. Functions take their state directory (pid and log files) as an
# argument, so two sandboxes can coexist.

readonly SANDBOX_MIRROR_HOST=deb.debian.org

sandbox_pid_alive() {
    [[ -f $1 ]] && kill -0 "$(<"$1")" 2>/dev/null
}

# The mirror's address, resolved on the host (the machines have no DNS; it is pinned in their
# /etc/hosts). Falls back to the last one resolved, so a start without working DNS still works.
sandbox_mirror_ip() {
    local state=$1 ip
    ip=$(getent ahostsv4 "$SANDBOX_MIRROR_HOST" | awk 'NR == 1 { print $1 }' || true)
    if [[ -z $ip && -f $state/mirror.ip ]]; then ip=$(<"$state/mirror.ip"); fi
    [[ -n $ip ]] || die "cannot resolve $SANDBOX_MIRROR_HOST on this host"
    echo "$ip" >"$state/mirror.ip"
    echo "$ip"
}

# sandbox_net_up NETNS BRIDGE ADDRESS/24 MIRROR_IP STATE_DIR [EXTRA_IP...]: the namespace, its
# bridge holding ADDRESS (the machines' gateway), the egress firewall and slirp4netns. EXTRA_IPs
# are let through on HTTPS too (a package registry the caller pins in /etc/hosts).
sandbox_net_up() {
    local netns=$1 bridge=$2 address=$3 mirror=$4 state=$5
    shift 5
    local subnet=${address%.*}.0/24 extra
    ip netns add "$netns"
    ip -n "$netns" link set lo up
    ip -n "$netns" link add "$bridge" type bridge
    ip -n "$netns" addr add "$address" dev "$bridge"
    ip -n "$netns" link set "$bridge" up
    ip netns exec "$netns" sysctl -qw net.ipv4.ip_forward=1

    local ipt=(ip netns exec "$netns" iptables -w)
    "${ipt[@]}" -t nat -A POSTROUTING -s "$subnet" -o tap0 -j MASQUERADE
    "${ipt[@]}" -P FORWARD DROP
    "${ipt[@]}" -A FORWARD -i "$bridge" -o "$bridge" -j ACCEPT
    "${ipt[@]}" -A FORWARD -i tap0 -o "$bridge" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    "${ipt[@]}" -A FORWARD -i "$bridge" -o tap0 -d "$mirror" -p tcp -m multiport --dports 80,443 -j ACCEPT
    "${ipt[@]}" -A OUTPUT -o tap0 -d "$mirror" -p tcp -m multiport --dports 80,443 -j ACCEPT
    for extra in "$@"; do
        "${ipt[@]}" -A FORWARD -i "$bridge" -o tap0 -d "$extra" -p tcp --dport 443 -j ACCEPT
        "${ipt[@]}" -A OUTPUT -o tap0 -d "$extra" -p tcp --dport 443 -j ACCEPT
    done
    "${ipt[@]}" -A OUTPUT -o tap0 -j DROP

    # No access to the host's loopback, no DNS.
    setsid slirp4netns --configure --mtu=65520 --disable-host-loopback --disable-dns \
        --netns-type=path "/run/netns/$netns" tap0 >"$state/slirp.log" 2>&1 </dev/null &
    echo $! >"$state/slirp.pid"
    local deadline=$((SECONDS + 10))
    until ip -n "$netns" link show tap0 >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "slirp4netns did not create tap0; see $state/slirp.log"
        sleep 0.1
    done
}

# Ends slirp4netns and deletes the namespace (its veths and bridge go with it).
sandbox_net_down() {
    local netns=$1 state=$2
    if sandbox_pid_alive "$state/slirp.pid"; then kill -TERM "$(<"$state/slirp.pid")" 2>/dev/null || true; fi
    rm -f "$state/slirp.pid"
    ip netns del "$netns" 2>/dev/null || true
}

# sandbox_resolve HOST: one IPv4 address of HOST, resolved on this host (the sandbox has no DNS).
sandbox_resolve() {
    local ip
    ip=$(getent ahostsv4 "$1" | awk 'NR == 1 { print $1 }' || true)
    [[ -n $ip ]] || die "cannot resolve $1 on this host"
    echo "$ip"
}

sandbox_net_exists() {
    ip netns list 2>/dev/null | grep -q "^$1\( \|$\)"
}

# sandbox_forward_start PORT STATE_DIR UPSTREAM_COMMAND: host 127.0.0.1:PORT, each connection handed
# to UPSTREAM_COMMAND (which must connect from inside the namespace, e.g. `ip netns exec NS socat
# STDIO TCP:IP:PORT`; a script path with arguments, so socat's EXEC needs no nested quoting).
sandbox_forward_start() {
    local port=$1 state=$2 upstream=$3
    sandbox_forward_stop "$state"
    if ss -Hltn "sport = :$port" | grep -q .; then
        log "warning: 127.0.0.1:$port is already in use; no forwarder"
        return 0
    fi
    setsid socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "EXEC:$upstream" \
        >"$state/forward.log" 2>&1 </dev/null &
    echo $! >"$state/forward.pid"
    echo "$port" >"$state/forward.port"
}

sandbox_forward_stop() {
    local state=$1
    if sandbox_pid_alive "$state/forward.pid"; then
        # The listener leads its own process group (setsid): this also ends open connections' children.
        kill -TERM -- "-$(<"$state/forward.pid")" 2>/dev/null || true
    fi
    rm -f "$state/forward.pid" "$state/forward.port"
}
