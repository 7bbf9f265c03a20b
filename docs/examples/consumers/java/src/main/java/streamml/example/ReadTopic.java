package streamml.example;

import java.io.File;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.StringJoiner;
import java.util.UUID;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Prints the named fields of every record of a topic (by default a prediction's
 * "event_id model_version score"), read with Apache Avro's single-object decoder
 * (C3 01 + CRC-64-AVRO fingerprint + body) against the topic's schema file. Arguments:
 * bootstrap servers, topic (prefix included), schema file (e.g. schemas/prediction.avsc),
 * then the fields to print (e.g. "alert_id state records_seen" for drift.alerts).
 */
public final class ReadTopic {
  public static void main(String[] args) throws Exception {
    Schema schema = new Schema.Parser().parse(new File(args[2]));
    List<String> fields = args.length > 3
        ? List.of(args).subList(3, args.length)
        : List.of("event_id", "model_version", "score");
    BinaryMessageDecoder<GenericRecord> decoder =
        new BinaryMessageDecoder<>(GenericData.get(), schema);
    Properties config = new Properties();
    config.put("bootstrap.servers", args[0]);
    config.put("group.id", "example-java-reader-" + UUID.randomUUID());
    config.put("isolation.level", "read_committed"); // the services write in transactions
    config.put("auto.offset.reset", "earliest");
    config.put("key.deserializer", ByteArrayDeserializer.class.getName());
    config.put("value.deserializer", ByteArrayDeserializer.class.getName());
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(config)) {
      consumer.subscribe(List.of(args[1]));
      while (true) {
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofSeconds(1))) {
          GenericRecord decoded = decoder.decode(record.value()); // by the writer's fingerprint
          StringJoiner line = new StringJoiner(" ");
          fields.forEach(field -> line.add(String.valueOf(decoded.get(field))));
          System.out.println(line);
        }
        System.out.flush();
        consumer.commitSync();
      }
    }
  }
}
