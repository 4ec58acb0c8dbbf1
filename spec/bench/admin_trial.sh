#!/usr/bin/env bash
# spec/bench/admin_trial.sh: the admin commands tried end to end as an operator would,
# with deploy/volume, the built binary and curl only (no test helpers):
#
#   spec/bench/admin_trial.sh [KEYS]        (default 3000; data under /tmp/mkv-trial)
#
#   1. three volumes, replicas 2, KEYS keys of 1 KB..1 MB written through the API, some
#      unlinked, some deleted;
#   2. the index is deleted; `mkv rebuild --md5` restores every key;
#   3. a fourth volume is added; `mkv rebalance` runs online under PUT/GET traffic;
#      every key is readable, at its replica count, and the volumes are balanced;
#   4. copies are corrupted, truncated and deleted by hand, an orphan is dropped in;
#      `mkv verify --deep` names each, `--repair` fixes what has a good copy left;
#   5. keys are unlinked and a large PUT is cut by a kill -9 of the server;
#      `mkv gc` reclaims both.
# Every step checks what it claims and the script exits 1 at the first failure. Ports
# 3100-3104 on 127.0.0.1 must be free.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
mkv=$repo/build/mkv
N=${1:-3000}
dir=${DIR:-/tmp/mkv-trial}
port=3100
url=http://127.0.0.1:$port

fail() { echo "TRIAL FAILED: $*" >&2; exit 1; }
step() { echo; echo "== $*"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }

vol_pids=()
mkv_pid=""
cleanup() {
  [ -n "$mkv_pid" ] && kill -TERM "$mkv_pid" 2>/dev/null && wait "$mkv_pid" 2>/dev/null || true
  for p in "${vol_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

rm -rf "$dir"
mkdir -p "$dir/pool"
start_volume() {
  PORT=$((port + $1)) BIND=127.0.0.1 WORKERS=1 setsid deploy/volume "$dir/volume$1" \
    >"$dir/volume$1.log" 2>&1 &
  vol_pids+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$((port + $1))/" && return; sleep 0.1; done
  fail "volume $1 did not start"
}
write_config() {
  local vols=""
  for i in $(seq 1 "$1"); do vols="$vols\"127.0.0.1:$((port + i))\", "; done
  cat >"$dir/config.lua" <<CONF
return {
  port = $port, listen = "127.0.0.1",
  db = "$dir/index",
  volumes = { $vols},
  replicas = 2,
  subvolumes = 4,
}
CONF
}
start_mkv() {
  "$mkv" -c "$dir/config.lua" >>"$dir/mkv.log" 2>&1 &
  mkv_pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "$url/?list" && return; sleep 0.1; done
  fail "mkv did not start"
}
stop_mkv() { kill -TERM "$mkv_pid"; wait "$mkv_pid" || true; mkv_pid=""; }

# Checks that every key in the file $1 ("key md5" lines) reads back with its bytes.
check_keys() {
  local bad
  bad=$(awk '{print $1, $2}' "$1" | xargs -P 8 -n 2 sh -c \
    'got=$(curl -sfL "'"$url"'$0" | md5sum | cut -d" " -f1); [ "$got" = "$1" ] || echo "$0"')
  [ -z "$bad" ] || fail "$(echo "$bad" | wc -l) keys of $1 do not read back, e.g. $(echo "$bad" | head -3 | tr '\n' ' ')"
  echo "   $(wc -l <"$1") keys read back with their bytes"
}
check_absent() {
  local bad
  bad=$(awk '{print $1}' "$1" | xargs -P 8 -n 1 sh -c \
    'c=$(curl -s -o /dev/null -w "%{http_code}" "'"$url"'$0"); [ "$c" = 404 ] || echo "$0 $c"')
  [ -z "$bad" ] || fail "keys of $1 that should be gone answer: $(echo "$bad" | head -3 | tr '\n' ' ')"
  echo "   $(wc -l <"$1") keys answer 404"
}
files_per_volume() {
  for i in $(seq 1 "$1"); do printf '%s ' "$(find "$dir/volume$i" -type f | wc -l)"; done
}

# A pool of 20 values, 1 KB to 1 MB.
for i in $(seq 0 19); do
  head -c $(((i * i * 2621) + 1024)) /dev/urandom >"$dir/pool/$i"
  md5[i]=$(md5sum <"$dir/pool/$i" | cut -d' ' -f1)
done

step "1. three volumes, $N keys written through the API"
for i in 1 2 3; do start_volume "$i"; done
write_config 3
start_mkv
: >"$dir/keys"
for i in $(seq 1 "$N"); do
  case $((i % 4)) in
    0) k="/trial/k$i" ;; 1) k="/trial/dir/sub/k$i" ;; 2) k="/trial/with%20space%20$i" ;; 3) k="/trial/%C3%BC=+$i" ;;
  esac
  echo "$k ${md5[i % 20]} $((i % 20))" >>"$dir/keys"
done
t0=$(now)
awk '{print $1, $3}' "$dir/keys" | xargs -P 8 -n 2 sh -c \
  'curl -sf -o /dev/null -T "'"$dir"'/pool/$1" "'"$url"'$0" || echo "PUT $0 failed"' >"$dir/put.err"
[ -s "$dir/put.err" ] && fail "$(wc -l <"$dir/put.err") PUTs failed"
echo "   written in $(since "$t0") s; files per volume: $(files_per_volume 3)"
head -n 100 "$dir/keys" >"$dir/unlinked"
sed -n 101,200p "$dir/keys" >"$dir/deleted"
tail -n +201 "$dir/keys" >"$dir/live"
awk '{print $1}' "$dir/unlinked" | xargs -P 8 -n 1 sh -c 'curl -sf -X UNLINK "'"$url"'$0"'
awk '{print $1}' "$dir/deleted" | xargs -P 8 -n 1 sh -c 'curl -sf -X DELETE "'"$url"'$0"'
check_keys "$dir/live"
check_absent "$dir/unlinked"
check_absent "$dir/deleted"

step "2. the index is lost: mkv rebuild --md5"
stop_mkv
rm -rf "$dir/index"
t0=$(now)
"$mkv" -c "$dir/config.lua" rebuild --md5 >"$dir/rebuild.out" 2>"$dir/rebuild.err" ||
  fail "rebuild exited $?: $(tail -3 "$dir/rebuild.err")"
echo "   $(tail -n 1 "$dir/rebuild.out") in $(since "$t0") s"
start_mkv
check_keys "$dir/live"
# UNLINK keeps the files; the files alone cannot say a key was unlinked (README), so
# rebuild brings those keys back, as the Go original does.
check_keys "$dir/unlinked"
check_absent "$dir/deleted"
# Content-Md5 came back with --md5.
k=$(head -n 1 "$dir/live" | cut -d' ' -f1)
curl -sI "$url$k" | grep -qi "^Content-Md5:" || fail "no Content-Md5 after rebuild --md5"
cat "$dir/unlinked" >>"$dir/live"

step "3. a fourth volume; mkv rebalance online, under PUT/GET traffic"
start_volume 4
stop_mkv
write_config 4
start_mkv
: >"$dir/traffic.keys"
: >"$dir/traffic.err"
(
  i=0
  while [ ! -e "$dir/traffic.stop" ]; do
    i=$((i + 1))
    k="/traffic/t$i"
    if curl -sf -o /dev/null -T "$dir/pool/$((i % 20))" "$url$k"; then
      echo "$k ${md5[i % 20]} $((i % 20))" >>"$dir/traffic.keys"
    else
      echo "PUT $k" >>"$dir/traffic.err"
    fi
    line=$(shuf -n 1 "$dir/live")
    got=$(curl -sfL "$url${line%% *}" | md5sum | cut -d' ' -f1)
    [ "$got" = "$(echo "$line" | cut -d' ' -f2)" ] || echo "GET ${line%% *}" >>"$dir/traffic.err"
  done
) &
traffic=$!
sleep 1
t0=$(now)
"$mkv" -c "$dir/config.lua" rebalance >"$dir/rebalance.out" 2>"$dir/rebalance.err" ||
  fail "rebalance exited $?: $(tail -3 "$dir/rebalance.err")"
echo "   $(tail -n 1 "$dir/rebalance.out") in $(since "$t0") s"
touch "$dir/traffic.stop"
wait "$traffic"
[ -s "$dir/traffic.err" ] && fail "traffic during the rebalance failed: $(head -3 "$dir/traffic.err" | tr '\n' ' ')"
echo "   traffic meanwhile: $(wc -l <"$dir/traffic.keys") PUTs and as many GETs, none failed"
cat "$dir/traffic.keys" >>"$dir/live"
sleep 6 # the grace period before surplus copies go
check_keys "$dir/live"
total=$(wc -l <"$dir/live")
counts=$(files_per_volume 4)
echo "   files per volume: $counts(ideal $((total * 2 / 4)) each)"
sum=0
for c in $counts; do
  sum=$((sum + c))
  # within 10% of an even share
  [ $((c * 40)) -ge $((total * 2 * 9)) ] && [ $((c * 40)) -le $((total * 2 * 11)) ] ||
    fail "volume holds $c files, not near $((total * 2 / 4))"
done
[ "$sum" = $((total * 2)) ] || fail "$sum files for $total keys at 2 replicas"
"$mkv" -c "$dir/config.lua" verify >"$dir/verify0.out" 2>&1 || fail "verify after rebalance: $(tail -3 "$dir/verify0.out")"
echo "   verify: $(tail -n 1 "$dir/verify0.out")"

step "4. damage by hand; mkv verify --deep names it, --repair fixes it"
file_of() { # the file of copy $2 (1 or 2) of key $1 on its volume's data directory
  local hdr v hp sv path
  hdr=$(curl -sI "$url$1" | tr -d '\r')
  v=$(echo "$hdr" | awk -F': ' 'tolower($1)=="key-volumes"{print $2}' | cut -d, -f"$2")
  path=$(echo "$hdr" | awk -F': ' 'tolower($1)=="location"{print $2}' |
    sed -E 's|^http://[^/]+(/sv[0-9a-f]+)?||')
  hp=${v%%/*}
  sv=""
  case $v in */*) sv=/${v#*/} ;; esac
  echo "$dir/volume$((${hp##*:} - port))$sv$path"
}
damaged=()
i=0
for line in $(shuf -n 16 --random-source=<(yes) <(grep "^/trial/k" "$dir/live" | awk '$3 >= 2 {print $1}')); do
  i=$((i + 1))
  f=$(file_of "$line" $((i % 2 + 1)))
  [ -f "$f" ] || fail "cannot find the copy of $line at $f"
  case $((i % 4)) in
    0) printf 'XXXX' | dd of="$f" bs=1 seek=100 conv=notrunc status=none ;; # same size, other bytes
    1) truncate -s -100 "$f" ;;
    2) rm -f "$f" ;;
    3) : >"$f" ;;
  esac
  damaged+=("$line")
done
lost=$(grep "^/trial/k" "$dir/live" | awk '$3 >= 2 {print $1}' | grep -vxF -f <(printf '%s\n' "${damaged[@]}") | head -n 1)
rm -f "$(file_of "$lost" 1)" "$(file_of "$lost" 2)"
# An orphan as a failed write leaves it: a key's file at its path, with no record.
okey=/trial/orphan-by-hand
oh=$(printf '%s' "$okey" | md5sum)
orphan="$dir/volume1/sv00/${oh:0:2}/${oh:2:2}/$(printf '%s' "$okey" | base64 -w0)"
mkdir -p "$(dirname "$orphan")"; echo junk >"$orphan"
stray="$dir/volume2/sv01/${oh:0:2}/${oh:2:2}/notes.txt"
mkdir -p "$(dirname "$stray")"; echo "an operator's file" >"$stray"
t0=$(now)
"$mkv" -c "$dir/config.lua" verify --deep >"$dir/verify1.out" 2>&1 && fail "verify --deep found nothing"
echo "   verify --deep: $(tail -n 1 "$dir/verify1.out") in $(since "$t0") s"
for k in "${damaged[@]}" "$lost"; do
  grep -qF "$k" "$dir/verify1.out" || fail "verify --deep does not name $k"
done
grep -q "^orphan .*$(basename "$orphan")" "$dir/verify1.out" || fail "verify does not name the orphan"
grep -q "^stray .*notes.txt" "$dir/verify1.out" || fail "verify does not name the stray file"
echo "   it names all ${#damaged[@]} damaged copies, the key with no copy left, the orphan and the stray file"
"$mkv" -c "$dir/config.lua" verify --deep --repair >"$dir/verify2.out" 2>&1 || true
echo "   verify --deep --repair: $(tail -n 1 "$dir/verify2.out")"
grep -vF "$lost " "$dir/live" >"$dir/live2"
check_keys "$dir/live2"
"$mkv" -c "$dir/config.lua" verify --deep >"$dir/verify3.out" 2>&1 || true
grep -qF "$lost" "$dir/verify3.out" || fail "the lost key is no longer reported"
echo "   verify --deep again: $(tail -n 1 "$dir/verify3.out") (only the lost key and the orphan remain)"

step "5. UNLINK and a PUT cut by kill -9; mkv gc reclaims them"
head -n 300 "$dir/live2" | tail -n 100 >"$dir/unlinked2"
awk '{print $1}' "$dir/unlinked2" | xargs -P 8 -n 1 sh -c 'curl -sf -X UNLINK "'"$url"'$0"'
head -c 300M /dev/urandom >"$dir/big"
curl -s -o /dev/null --limit-rate 30M -T "$dir/big" "$url/trial/big" &
big=$!
sleep 3
kill -9 "$mkv_pid"; wait "$mkv_pid" 2>/dev/null || true; mkv_pid=""
wait "$big" || true
"$mkv" -c "$dir/config.lua" index-flush >/dev/null 2>&1 || true
start_mkv
before=$(du -sm "$dir"/volume? | awk '{s+=$1} END {print s}')
"$mkv" -c "$dir/config.lua" gc --dry-run >"$dir/gc0.out" 2>&1 || fail "gc --dry-run: $(tail -3 "$dir/gc0.out")"
echo "   gc --dry-run: $(tail -n 1 "$dir/gc0.out")"
[ "$(du -sm "$dir"/volume? | awk '{s+=$1} END {print s}')" = "$before" ] || fail "gc --dry-run changed the volumes"
t0=$(now)
"$mkv" -c "$dir/config.lua" gc >"$dir/gc1.out" 2>&1 || fail "gc: $(tail -3 "$dir/gc1.out")"
after=$(du -sm "$dir"/volume? | awk '{s+=$1} END {print s}')
echo "   gc: $(tail -n 1 "$dir/gc1.out") in $(since "$t0") s; volumes $before MB -> $after MB"
left=$(curl -sf "$url/?unlinked")
[ "$left" = '{"next":"","keys":[]}' ] || fail "records left in ?unlinked: ${left:0:300}"
check_absent "$dir/unlinked2"
grep -vF -f <(awk '{print $1 " "}' "$dir/unlinked2") "$dir/live2" >"$dir/live3"
check_keys "$dir/live3"
[ ! -e "$orphan" ] || fail "gc left the orphan: $(grep -i orphan "$dir/gc1.out" | head -3)"
[ -e "$stray" ] || fail "gc removed the operator's stray file"
echo
echo "TRIAL PASSED"
