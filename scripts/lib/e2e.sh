# Sourced by scripts/lab-e2e and scripts/vagrant-e2e: the reporting and request helpers of the
# end-to-end tests. Each check prints "ok N - what"; the first failure prints why and the tail of
# a log, and exits 1; the caller's EXIT trap calls e2e_summary, whose last line is
# "N passed, M failed".
#
# The caller sets LOGS (a folder for command outputs), GATEWAY_URL (for http) and defines
# `provision` (for provision_json).

PASSED=0
FAILED=0
FAILED_LINE=
CURRENT_STEP=setup
STARTED_AT=$SECONDS

# --- reporting -------------------------------------------------------------------------------------

step() {
    CURRENT_STEP=$1
    printf '\n== step %s (%ss)\n' "$*" "$((SECONDS - STARTED_AT))"
}

pass() {
    PASSED=$((PASSED + 1))
    printf '  ok %d - %s\n' "$PASSED" "$*"
}

# Prints why and the tail of the relevant log, then exits 1 (the EXIT trap reports and cleans up).
fail() {
    local message=$1 log=${2:-}
    FAILED=1
    printf '\nFAILED in step %s: %s\n' "$CURRENT_STEP" "$message" >&2
    if [[ -n $log && -s $log ]]; then
        printf -- '--- last lines of %s\n' "$log" >&2
        tail -n 40 "$log" >&2
        printf -- '---\n' >&2
    fi
    exit 1
}

# Called from the caller's EXIT trap with the exit status: a failure outside any check (set -e)
# is still reported with its line, then the totals.
e2e_summary() {
    local status=$1
    if ((status != 0 && FAILED == 0)); then
        FAILED=1
        printf '\nFAILED in step %s: unexpected exit %d at line %s of %s\n' \
            "$CURRENT_STEP" "$status" "${FAILED_LINE:-?}" "$0" >&2
    fi
    ((status == 0)) || printf 'logs: %s\n' "$LOGS" >&2
}

e2e_totals() {
    local status=$1
    printf 'total time: %ss' "$((SECONDS - STARTED_AT))"
    [[ -n ${NO_CHANGE_APPLY_MS:-} ]] && printf '; no-change apply: %ss' "$(seconds "$NO_CHANGE_APPLY_MS")"
    printf '\n'
    # The last line, plain, for CI logs and humans alike.
    printf '%d passed, %d failed\n' "$PASSED" "$((status != 0 ? 1 : 0))"
}

# http METHOD PATH [JSON]: sets STATUS and BODY from the gateway, through the host's forwarder.
http() {
    local method=$1 path=$2 data=${3:-} args=()
    [[ -n $data ]] && args=(-H 'Content-Type: application/json' --data "$data")
    rm -f "$LOGS/body"
    touch "$LOGS/body"
    STATUS=$(curl -sS --max-time 15 -X "$method" "${args[@]}" -o "$LOGS/body" -w '%{http_code}' \
        "$GATEWAY_URL$path" 2>"$LOGS/curl.err") || STATUS="curl error: $(<"$LOGS/curl.err")"
    BODY=$(<"$LOGS/body")
}

expect_status() {
    local want=$1 what=$2
    [[ $STATUS == "$want" ]] || fail "$what: expected HTTP $want, got $STATUS: ${BODY:0:300}"
}

# json EXPRESSION: evaluates a Python expression over the JSON document on stdin (bound to `d`).
json() {
    python3 -c 'import json, sys; d = json.load(sys.stdin); v = eval(sys.argv[1]); print(v if not isinstance(v, (dict, list)) else json.dumps(v))' "$1"
}

# wait_for SECONDS COMMAND...: retries COMMAND every half second; fails when time is up.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

now_ms() {
    date +%s%3N
}

# seconds MILLISECONDS: "1.234"
seconds() {
    printf '%d.%03d' "$(($1 / 1000))" "$(($1 % 1000))"
}

# Runs `provision --json ARGS` and keeps stdout (the JSON document) and stderr (progress) apart.
provision_json() {
    local name=$1
    shift
    set +e
    provision --json "$@" >"$LOGS/$name.json" 2>"$LOGS/$name.log"
    PROVISION_STATUS=$?
    set -e
}


# exposure_of MACHINE UNIT LIMIT: systemd-analyze's exposure score of UNIT on the lab machine, which
# must be at most LIMIT; appends "UNIT@MACHINE SCORE" to EXPOSURES.
EXPOSURES=()
exposure_of() {
    local machine=$1 unit=$2 limit=$3 score
    score=$("$LAB" ssh "$machine" "systemd-analyze security --no-pager $(printf %q "$unit") | tail -n 1" |
        grep -oE '[0-9]+\.[0-9]+' | head -n 1) || fail "systemd-analyze security $unit on $machine failed"
    python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$score" "$limit" ||
        fail "$unit on $machine has an exposure of $score, more than $limit"
    EXPOSURES+=("${unit%.service}@$machine $score")
}

# capture_start PCAP IP...: tcpdump on the lab's bridge keeps in PCAP every TCP packet from one of
# the machines IP... to another (not SSH, not a client's plain HTTP from the bridge's own address),
# to be searched afterwards (capture_stop, capture_in_clear). Sets CAPTURE_PID.
capture_start() {
    local pcap=$1 ip sources="" destinations=""
    shift
    for ip in "$@"; do
        sources+="${sources:+ or }src host $ip"
        destinations+="${destinations:+ or }dst host $ip"
    done
    # --immediate-mode: each packet reaches the file as it comes, not in blocks, so the last ones
    # are there when the capture stops.
    "$LAB" exec tcpdump -i br0 --immediate-mode -U -s 0 -w "$pcap" \
        "tcp and not port 22 and ($sources) and ($destinations)" 2>"$pcap.log" &
    CAPTURE_PID=$!
    capturing() { grep -q "listening on br0" "$pcap.log"; }
    wait_for 10 capturing || fail "tcpdump did not start on the lab's bridge" "$pcap.log"
}

# capture_stop PCAP: ends the capture (a second later, for the last packets) and writes its packets
# as text to PCAP.txt.
capture_stop() {
    sleep 1
    kill -INT "$CAPTURE_PID"
    wait "$CAPTURE_PID" || true
    CAPTURE_PID=
    "$LAB" exec tcpdump -nn -r "$1" >"$1.txt" 2>/dev/null || fail "tcpdump cannot read its capture" "$1.log"
}

# capture_packets PCAP PATTERN: how many of the capture's packets (PCAP.txt) match PATTERN.
capture_packets() {
    grep -c "$2" "$1.txt" || true
}

# capture_in_clear PCAP WORD...: the words found in clear anywhere in PCAP, space-separated.
capture_in_clear() {
    python3 -c '
import sys
data = open(sys.argv[1], "rb").read()
print(" ".join(word for word in sys.argv[2:] if word and word.encode() in data))
' "$@"
}

# other_ca_files MACHINE DIR NAME OWNER: a CA of its own and a certificate from it for NAME (and the
# machine's first address), made on MACHINE in DIR (openssl: the test's tool, not the platform's):
# ca.crt, host.crt, and host.key, 0600, owned by OWNER, as is DIR.
other_ca_files() {
    "$LAB" ssh "$1" "bash -s -- $(printf '%q ' "$2" "$3" "$4")" <<'MAKE' || fail "cannot make another CA's certificate on $1"
{
set -e
dir=$1 name=$2 owner=$3
rm -rf "$dir" && mkdir -p "$dir" && cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=other-ca \
    -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout host.key -out host.csr 2>/dev/null
printf 'subjectAltName = DNS:%s, IP:%s\nbasicConstraints = CA:FALSE\n' "$name" "$(hostname -I | awk '{ print $1 }')" >v3.cnf
openssl x509 -req -in host.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile v3.cnf \
    -out host.crt 2>/dev/null
chmod 0600 host.key
chown "$owner" "$dir" host.key
}
MAKE
}

# provision_with DIR ARGS...: the provision in DIR, with the templates in DIR/templates (the working
# tree's when DIR has none), on the script's lab inventory (INVENTORY_FILE, ENV_FILE), deploying
# the services of BINARIES_DIR (RELEASE_DIR unless set). DIR may be an earlier release's.
provision_with() {
    local dir=$1 templates=templates
    shift
    [[ -d $dir/templates ]] && templates=$dir/templates
    "$LAB" exec "$dir/provision" -i "$INVENTORY_FILE" --env-file "$ENV_FILE" \
        --binaries "${BINARIES_DIR:-$RELEASE_DIR}" --templates "$templates" "$@"
}
