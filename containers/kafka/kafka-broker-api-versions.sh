#!/bin/sh
# The apache/kafka image's health-check tool, from the same jars.
exec java -Xmx64m -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
  -cp '/opt/kafka/libs/*' kafka.admin.BrokerApiVersionsCommand "$@"
