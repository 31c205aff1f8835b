# The launchers' option parsing: `parse_options SCRIPT "NAME ..." "$@"` sets each --NAME=VALUE
# given as the shell variable NAME, --dry-run as dry=1, and what follows -- as the array
# `train` (bnjax train's flags); any other option exits 2, naming it. Sourced, not run.
parse_options() {
  local script=$1 known=" $2 " option
  shift 2
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) dry=1 ;;
      --) shift; train=("$@"); return ;;
      --*=*)
        option=${1%%=*}; option=${option#--}
        [[ "$known" == *" $option "* ]] || { echo "$script: unknown option $1" >&2; exit 2; }
        printf -v "$option" '%s' "${1#*=}" ;;
      *) echo "$script: unknown option $1" >&2; exit 2 ;;
    esac
    shift
  done
}
