# Sourced first by every script in scripts/ (with the script's arguments still in "$@"):
#   --help     prints the script's header comment and exits;
#   --dry-run  (or DRY_RUN=1, which the scripts a script calls inherit) prints each command it would run as
#              one line "DRY-RUN: <argv, shell-quoted>" instead of running it: no training, no GPU. The tests
#              (tests/cli/test_scripts.py) parse those lines against the rklu CLI and the files they name.
case "${1:-}" in
  -h|--help) sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; exit 0 ;;
  --dry-run) export DRY_RUN=1; shift ;;
esac

dry_run() { [ -n "${DRY_RUN:-}" ]; }

# run CMD ARGS...: run it, or under --dry-run print it
run() {
  if dry_run; then
    printf 'DRY-RUN:'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
