package streamml.example;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.FileInputStream;
import java.io.InputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.ByteBuffer;
import java.security.KeyStore;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.StringJoiner;
import java.util.UUID;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Prints the named fields of every record of a topic (by default a prediction's
 * "event_id model_version score"), read in the schema registry
 * wire format (00 + 4-byte big-endian schema id + body): the writer schema is fetched once
 * per id from the registry's Confluent-compatible API (GET {url}/schemas/ids/{id}) and the
 * body decoded with Apache Avro's GenericDatumReader. Arguments: bootstrap servers, topic
 * (prefix included), registry URL (e.g. https://host:port/apis/ccompat/v7), the PEM file of
 * the CA that signed the registry's certificate, then the fields to print.
 */
public final class ReadRegistryTopic {
  public static void main(String[] args) throws Exception {
    List<String> fields = args.length > 4
        ? List.of(args).subList(4, args.length)
        : List.of("event_id", "model_version", "score");
    HttpClient http = HttpClient.newBuilder().sslContext(trusting(args[3])).build();
    Map<Integer, GenericDatumReader<GenericRecord>> readers = new HashMap<>();
    Properties config = new Properties();
    config.put("bootstrap.servers", args[0]);
    config.put("group.id", "example-java-registry-reader-" + UUID.randomUUID());
    config.put("isolation.level", "read_committed"); // the services write in transactions
    config.put("auto.offset.reset", "earliest");
    config.put("key.deserializer", ByteArrayDeserializer.class.getName());
    config.put("value.deserializer", ByteArrayDeserializer.class.getName());
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(config)) {
      consumer.subscribe(List.of(args[1]));
      while (true) {
        for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofSeconds(1))) {
          ByteBuffer value = ByteBuffer.wrap(record.value());
          if (value.get() != 0) {
            throw new IllegalStateException("not the registry wire format at " + record);
          }
          int id = value.getInt();
          GenericDatumReader<GenericRecord> reader = readers.get(id);
          if (reader == null) {
            reader = new GenericDatumReader<>(writerSchema(http, args[2], id));
            readers.put(id, reader);
          }
          GenericRecord decoded = reader.read(null, DecoderFactory.get().binaryDecoder(
              record.value(), 5, record.value().length - 5, null));
          StringJoiner line = new StringJoiner(" ");
          fields.forEach(field -> line.add(String.valueOf(decoded.get(field))));
          System.out.println(line);
        }
        System.out.flush();
        consumer.commitSync();
      }
    }
  }

  /** The writer schema registered under {@code id}: {"schema": "<the schema as JSON>"}. */
  static Schema writerSchema(HttpClient http, String url, int id) throws Exception {
    HttpRequest request = HttpRequest.newBuilder(URI.create(url + "/schemas/ids/" + id))
        .timeout(Duration.ofSeconds(10)).GET().build();
    HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
    if (response.statusCode() != 200) {
      throw new IllegalStateException("schema id " + id + ": HTTP " + response.statusCode());
    }
    String text = new ObjectMapper().readTree(response.body()).get("schema").asText();
    return new Schema.Parser().parse(text);
  }

  /** TLS that trusts the registry's CA (a PEM file) and nothing else. */
  static SSLContext trusting(String caPem) throws Exception {
    KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
    trust.load(null, null);
    try (InputStream in = new FileInputStream(caPem)) {
      trust.setCertificateEntry("registry-ca",
          CertificateFactory.getInstance("X.509").generateCertificate(in));
    }
    TrustManagerFactory factory =
        TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
    factory.init(trust);
    SSLContext context = SSLContext.getInstance("TLS");
    context.init(null, factory.getTrustManagers(), null);
    return context;
  }
}
