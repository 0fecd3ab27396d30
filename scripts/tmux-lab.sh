#!/usr/bin/env bash
# Opens the seed's four windows on a lab, as tmux panes of one window:
#
#   +----------------------------+----------------------------+
#   | apple: tcp-upper-server    | apple: tcp-upper-lab ss    |
#   |   --events (states)        |   (our stack's sockets)    |
#   +----------------------------+----------------------------+
#   | ant:   tcp-upper-client    | apple: tcpdump on tun0     |
#   +----------------------------+----------------------------+
#
#   sudo scripts/tmux-lab.sh [--name N]
#
# It builds the lab (without starting a server: the server runs in the first
# pane, in the foreground, as in the seed) unless it is already up. Type in
# the client pane; Ctrl-D closes. Leaving tmux leaves the lab up; take it
# down with: tcp-upper-lab down --name N.
set -euo pipefail
name=tcpu
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "tmux-lab.sh: unknown argument $1 (see -h)" >&2; exit 2 ;;
  esac
done
for p in tmux tcp-upper-lab tcp-upper-server tcp-upper-client; do
  command -v "$p" >/dev/null || { echo "tmux-lab.sh: $p not found on PATH (go install ./cmd/... ; apt-get install tmux)" >&2; exit 1; }
done
lab="tcp-upper-lab"
if [ ! -e "/var/run/netns/$name-ant" ]; then
  $lab up --name "$name" --no-server
fi
ex="$lab exec --name $name"
session="tcp-upper-$name"
server=$(tmux new-session -d -P -F '#{pane_id}' -s "$session" -n lab "$ex apple tcp-upper-server --events; read -p 'server exited; press enter'")
ss=$(tmux split-window -h -P -F '#{pane_id}' -t "$server" "watch -n 0.5 $lab ss -tan --name $name")
client=$(tmux split-window -v -P -F '#{pane_id}' -t "$server" "sleep 1; $ex ant tcp-upper-client -i 10.0.2.2; read -p 'client exited; press enter'")
tmux split-window -v -t "$ss" "$ex apple tcpdump -ni tun0 tcp port 9999"
tmux select-pane -t "$client"
if [ -n "${TMUX:-}" ]; then
  tmux switch-client -t "$session"
else
  tmux attach -t "$session"
fi
