#!/bin/sh
# Writes server.properties from the environment as the apache/kafka image does
# (KAFKA_LOG_DIRS -> log.dirs; '__' -> '_', '___' -> '-'), formats the KRaft storage on
# the first start with CLUSTER_ID, and runs the broker in the foreground (SIGTERM stops it).
set -eu
config=/var/lib/kafka/server.properties
: > "$config"
env | grep '^KAFKA_' | grep -v '^KAFKA_HEAP_OPTS=' | while IFS='=' read -r name value; do
  key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' \
        | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
  printf '%s=%s\n' "$key" "$value" >> "$config"
done
data=${KAFKA_LOG_DIRS:-/var/lib/kafka/data}
classpath='/opt/kafka/libs/*'
if [ ! -f "$data/meta.properties" ]; then
  java -cp "$classpath" kafka.tools.StorageTool format --ignore-formatted \
    -t "${CLUSTER_ID:?set CLUSTER_ID (a 22-character base64 uuid) to format the storage}" \
    -c "$config"
fi
exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC \
  -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
  -cp "$classpath" kafka.Kafka "$config"
