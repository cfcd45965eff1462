# Helpers shared by load-tests/run and load-tests/ab (sourced, not run).

# wait_port PORT: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2
  return 1
}

# stop_waymark PID: SIGTERM, then wait for the exit. A waymark that is still
# running 30 s later (its grace period and Kafka flush timeout are far
# shorter) is a bug to report, not to wait for: it is killed and this fails.
stop_waymark() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 300); do
    if ! kill -0 "$1" 2>/dev/null; then
      wait "$1" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
  echo "waymark (pid $1) did not exit within 30 s of SIGTERM: killed; this is a bug" >&2
  kill -KILL "$1" 2>/dev/null || true
  return 1
}
