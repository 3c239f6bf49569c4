{
  "targets": [
    {
      "target_name": "clonecast_native",
      "sources": ["src/clonecast_native.c", "src/mac.c", "src/zstd.c", "src/udp_batch.c", "src/fec.c", "src/hivex.c"],
      "libraries": ["-ldl"],
      "cflags_c": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
