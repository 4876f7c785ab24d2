#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller) from Maven Central jars.
#
#   ops/kafka/local-kafka.sh fetch    resolve the broker jars with Maven into ops/kafka/.cache/libs
#   ops/kafka/local-kafka.sh start    fetch if needed, format storage once, start, wait until it answers
#   ops/kafka/local-kafka.sh stop     stop the broker started by this script (SIGTERM, then SIGKILL)
#   ops/kafka/local-kafka.sh restart  stop + start, keeping the data (used by the chaos tests)
#   ops/kafka/local-kafka.sh status   exit 0 when a broker answers on the port
#
# A broker already answering on LOCAL_KAFKA_PORT is reused, never started twice.
# Settings (environment): LOCAL_KAFKA_PORT (9092), LOCAL_KAFKA_CONTROLLER_PORT (9093),
# LOCAL_KAFKA_HOME (ops/kafka/.cache), LOCAL_KAFKA_HEAP (1g).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${LOCAL_KAFKA_HOME:-$here/.cache}"
port="${LOCAL_KAFKA_PORT:-9092}"
cport="${LOCAL_KAFKA_CONTROLLER_PORT:-9093}"
heap="${LOCAL_KAFKA_HEAP:-1g}"
libs="$home/libs"
data="$home/data-$port"
conf="$home/server-$port.properties"
pidfile="$home/kafka-$port.pid"
logfile="$home/kafka-$port.log"

die() { echo "local-kafka: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fetch() {
  if [ -f "$libs/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "Maven (mvn) is not installed; install it (apt-get install maven) and retry"
  command -v java >/dev/null || die "a JDK (java 17+) is not installed; install one (apt-get install openjdk-17-jdk-headless) and retry"
  echo "local-kafka: resolving Apache Kafka jars from Maven Central into $libs" >&2
  mkdir -p "$libs"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime \
    || die "Maven could not resolve the Kafka jars (is Maven Central reachable?)"
  touch "$libs/.complete"
}

write_config() {
  mkdir -p "$data"
  cat >"$conf" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=16777216
EOF
}

java_run() {
  java -Xms256m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$here/log4j2.properties" \
    -cp "$libs/*" "$@"
}

format_storage() {
  if [ -f "$data/meta.properties" ]; then return 0; fi
  local cluster_id
  cluster_id="$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
  java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$conf" >/dev/null \
    || die "formatting KRaft storage in $data failed"
}

wait_ready() {
  local deadline=$((SECONDS + ${LOCAL_KAFKA_START_TIMEOUT:-300}))
  while [ $SECONDS -lt $deadline ]; do
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      tail -n 30 "$logfile" >&2 || true
      die "the broker exited during start-up; its log is $logfile"
    fi
    if port_open "$port" && grep -q "Kafka Server started" "$logfile" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  die "the broker did not answer on 127.0.0.1:$port within the start timeout; see $logfile"
}

running_pid() {
  # A broker of ours may be up but not yet listening (recovering its logs).
  pgrep -f -- "kafka.Kafka $conf" | head -n 1
}

start() {
  if port_open "$port"; then
    echo "local-kafka: a broker already answers on 127.0.0.1:$port; reusing it" >&2
    return 0
  fi
  local existing
  existing="$(running_pid || true)"
  if [ -n "$existing" ]; then
    echo "$existing" >"$pidfile"
    echo "local-kafka: broker pid $existing is starting; waiting for it" >&2
    wait_ready
    return 0
  fi
  fetch
  write_config
  format_storage
  : >"$logfile"
  nohup bash -c 'exec java -Xms256m "-Xmx$0" -XX:+UseG1GC -Djava.awt.headless=true \
      "-Dlog4j2.configurationFile=$1" -cp "$2/*" kafka.Kafka "$3"' \
      "$heap" "$here/log4j2.properties" "$libs" "$conf" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready
  echo "local-kafka: broker up on 127.0.0.1:$port (pid $(cat "$pidfile"), log $logfile)" >&2
}

stop() {
  local pid
  pid="$(running_pid || true)"
  [ -n "$pid" ] || pid="$(cat "$pidfile" 2>/dev/null || true)"
  [ -n "$pid" ] || { echo "local-kafka: no broker started by this script on port $port" >&2; return 0; }
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 240); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid"
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  fi
  rm -f "$pidfile"
  echo "local-kafka: broker on port $port stopped" >&2
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) port_open "$port" ;;
  *) echo "usage: $0 fetch|start|stop|restart|status" >&2; exit 2 ;;
esac
