#!/bin/bash
# Unmodified shell-script workload for the mount tests: run in a directory on the mount.
# Forks many small processes, uses temp files, pipes, redirections, here-documents,
# command substitution, xargs/find/sed -i/sort/awk, and `set -e` so any failure stops it.
# Prints "shell suite OK" at the end; every step checks its own result.
set -euo pipefail
work=${1:-.}
cd "$work"
export TMPDIR="$PWD/tmp"
mkdir -p "$TMPDIR" data

fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. many small processes writing small files
for i in $(seq 1 200); do
    echo "line $i" > "data/f$i.txt"
done
[ "$(ls data | wc -l)" -eq 200 ] || fail "200 files"
[ "$(cat data/f*.txt | wc -l)" -eq 200 ] || fail "200 lines"

# 2. pipes and sort/uniq/awk
sum=$(cat data/*.txt | awk '{s += $2} END {print s}')
[ "$sum" -eq 20100 ] || fail "awk sum $sum"
[ "$(seq 1 1000 | sort -rn | head -1)" = 1000 ] || fail "sort"
seq 1 500 | sed 's/$/ x/' | sort -u | wc -l | grep -qx 500 || fail "sort -u"

# 3. redirections: append, stderr, both, file descriptors
: > log.txt
for i in 1 2 3; do echo "out $i" >> log.txt; done
ls /nonexistent-path 2>> log.txt || true
{ echo to-stdout; echo to-stderr >&2; } > both.txt 2>&1
exec 3> fd3.txt; echo "via fd3" >&3; exec 3>&-
[ "$(wc -l < log.txt)" -eq 4 ] || fail "log lines"
grep -q to-stderr both.txt || fail "2>&1"
[ "$(cat fd3.txt)" = "via fd3" ] || fail "fd 3"

# 4. here-documents and here-strings
cat > heredoc.txt <<END
alpha $((6 * 7))
beta $(echo sub)
END
cat >> heredoc.txt <<'END'
gamma $NOT_EXPANDED
END
[ "$(sed -n 1p heredoc.txt)" = "alpha 42" ] || fail "heredoc 1"
[ "$(sed -n 2p heredoc.txt)" = "beta sub" ] || fail "heredoc 2"
grep -qF 'gamma $NOT_EXPANDED' heredoc.txt || fail "quoted heredoc"
read -r w1 w2 <<< "here string"
[ "$w2" = string ] || fail "here-string"

# 5. temp files and atomic replace (sed -i writes a temp file and renames it)
t=$(mktemp)
t2=$(mktemp -d)
printf 'a\nb\nc\n' > "$t"
sed -i 's/b/B/' "$t"
[ "$(tr -d '\n' < "$t")" = aBc ] || fail "sed -i"
mv "$t" "$t2/moved"
[ -f "$t2/moved" ] && [ ! -e "$t" ] || fail "mv temp"
rm -r "$t2"

# 6. xargs in parallel, find -exec, subshells in the background
find data -name 'f1*.txt' -print0 | xargs -0 -n 5 -P 4 gzip
[ "$(find data -name '*.gz' | wc -l)" -eq 111 ] || fail "gzip count"
find data -name '*.gz' -exec gunzip {} +
[ "$(find data -name '*.gz' | wc -l)" -eq 0 ] || fail "gunzip"
for j in 1 2 3 4; do
    ( for k in $(seq 1 50); do echo "$j.$k"; done > "bg$j.txt" ) &
done
wait
[ "$(cat bg*.txt | wc -l)" -eq 200 ] || fail "background subshells"

# 7. a pipeline through a fifo, and file tests
mkfifo pipe
( seq 1 100 > pipe ) &
[ "$(awk '{s+=$1} END {print s}' < pipe)" -eq 5050 ] || fail "fifo"
wait
rm pipe
ln -s log.txt link
[ -L link ] && [ -f link ] && [ -s log.txt ] || fail "file tests"
[ log.txt -nt /etc/hostname ] || [ log.txt -ot /etc/hostname ] || fail "-nt/-ot"

# 8. set -e really stops a failing script
if bash -c 'set -e; false; echo should-not-print' > sete.txt 2>&1; then fail "set -e"; fi
[ ! -s sete.txt ] || fail "set -e printed"

rm -rf data tmp
echo "shell suite OK"
