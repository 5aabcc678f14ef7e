# shellcheck shell=bash
# Sourced by the scripts beside it: argument handling they all share. Each script defines die().

# Prints the calling script's help: its header comment, down to `set -euo pipefail`.
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

# Fails unless the option in $1 has a value after it.
need_value() {
    [ "$#" -ge 2 ] || die "$1 needs a value (try --help)"
}
