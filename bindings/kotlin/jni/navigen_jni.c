/*
 * JNI shim between the Kotlin classes of bindings/kotlin (dev.navigen) and navigen's C ABI
 * (include/navigen.h). Built per ABI into libnavigen_jni.so beside libnavigen.
 *
 * - The natives are registered in JNI_OnLoad (RegisterNatives): no exported Java_* symbols, and a
 *   renamed Kotlin method fails at load time instead of at its first call.
 * - No global state: a key store's context keeps its own JavaVM pointer to find the calling thread's
 *   JNIEnv (navigen calls the key store on the thread that made the history call).
 * - Strings cross as UTF-8 byte arrays, not jstring: JNI's "modified UTF-8" writes NUL and characters
 *   outside the BMP differently from the UTF-8 navigen reads and writes. Kotlin encodes, decodes and
 *   refuses NUL inside a string (a C string would end there).
 * - A failed status becomes a dev.navigen.NavigenException built by NativeLib.error(status, message),
 *   unless a Java exception is already pending: one thrown by a callback (token sink, key store) is the
 *   real cause, so it is the one that propagates.
 * - Callbacks may run hundreds of times in one native frame: every local reference they make is
 *   deleted before they return.
 */
#include <jni.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "navigen.h"

#define NATIVE_CLASS "dev/navigen/NativeLib"

/* --- conversions ------------------------------------------------------------------------------ */

static void throw_oom(JNIEnv *env) {
  jclass c = (*env)->FindClass(env, "java/lang/OutOfMemoryError");
  if (c) (*env)->ThrowNew(env, c, "navigen JNI: out of memory");
}

/* UTF-8 bytes as a new byte[] (NULL with an exception pending on failure). */
static jbyteArray to_bytes(JNIEnv *env, const char *s, size_t n) {
  if (n > INT32_MAX) {
    throw_oom(env);
    return NULL;
  }
  jbyteArray a = (*env)->NewByteArray(env, (jsize)n);
  if (a && n) (*env)->SetByteArrayRegion(env, a, 0, (jsize)n, (const jbyte *)s);
  return a;
}

/* A byte[] as a NUL-terminated copy to free(); NULL for a null array or (exception pending) on
 * failure. */
static char *to_cstr(JNIEnv *env, jbyteArray a) {
  if (!a) return NULL;
  jsize n = (*env)->GetArrayLength(env, a);
  char *s = malloc((size_t)n + 1);
  if (!s) {
    throw_oom(env);
    return NULL;
  }
  (*env)->GetByteArrayRegion(env, a, 0, n, (jbyte *)s);
  s[n] = 0;
  return s;
}

/* An Array<ByteArray> as C strings; *len receives the count. NULL with an exception pending on
 * failure (an empty array gives a valid, empty list). */
struct strs {
  char **v;
  size_t len;
};

static void strs_free(struct strs *l) {
  for (size_t i = 0; i < l->len; i++) free(l->v[i]);
  free(l->v);
}

static int to_strs(JNIEnv *env, jobjectArray a, struct strs *out) {
  out->len = 0;
  jsize n = (*env)->GetArrayLength(env, a);
  out->v = calloc((size_t)n + 1, sizeof(char *));
  if (!out->v) {
    throw_oom(env);
    return 0;
  }
  for (jsize i = 0; i < n; i++) {
    jbyteArray e = (jbyteArray)(*env)->GetObjectArrayElement(env, a, i);
    char *s = e ? to_cstr(env, e) : NULL;
    if (e) (*env)->DeleteLocalRef(env, e);
    if (!s) {
      strs_free(out);
      if (!(*env)->ExceptionCheck(env)) {
        jclass c = (*env)->FindClass(env, "java/lang/NullPointerException");
        if (c) (*env)->ThrowNew(env, c, "navigen JNI: a null item id");
      }
      return 0;
    }
    out->v[out->len++] = s;
  }
  return 1;
}

/* Throws the NavigenException of `st` unless it is NAVIGEN_OK; returns nonzero when an exception is
 * pending afterwards (this one, or one a callback threw first). */
static int failed(JNIEnv *env, enum navigen_status st) {
  if ((*env)->ExceptionCheck(env)) return 1;
  if (st == NAVIGEN_OK) return 0;
  const char *msg = navigen_last_error();
  jclass c = (*env)->FindClass(env, NATIVE_CLASS);
  if (!c) return 1;
  jmethodID m = (*env)->GetStaticMethodID(env, c, "error", "(I[B)Ljava/lang/Throwable;");
  if (!m) return 1;
  jbyteArray b = to_bytes(env, msg, strlen(msg));
  if (!b) return 1;
  jthrowable e = (jthrowable)(*env)->CallStaticObjectMethod(env, c, m, (jint)st, b);
  if (e && !(*env)->ExceptionCheck(env)) (*env)->Throw(env, e);
  return 1;
}

/* A navigen string as a byte[]; the string is released either way. */
static jbyteArray take(JNIEnv *env, char *s) {
  if (!s) return NULL;
  jbyteArray a = to_bytes(env, s, strlen(s));
  navigen_string_free(s);
  return a;
}

/* Kotlin passes a pointer as a Long; 0 is no handle. */
#define PTR(type, v) ((type *)(uintptr_t)(v))

/* --- library ---------------------------------------------------------------------------------- */

static jint abi_version(JNIEnv *env, jclass cls) {
  (void)env;
  (void)cls;
  return (jint)navigen_abi_version();
}

static jbyteArray version(JNIEnv *env, jclass cls) {
  (void)cls;
  const char *v = navigen_version();
  return to_bytes(env, v, strlen(v));
}

/* --- engine ----------------------------------------------------------------------------------- */

/* Negative values keep the library's default (navigen_engine_default_params). */
static jlong engine_open(JNIEnv *env, jclass cls, jbyteArray dir, jint threads, jint gpu_layers,
                         jint context_size, jlong seed, jint verify_checksums) {
  (void)cls;
  struct navigen_engine_params p;
  if (failed(env, navigen_engine_default_params(&p))) return 0;
  if (threads >= 0) p.threads = (uint32_t)threads;
  if (gpu_layers >= 0) p.gpu_layers = (uint32_t)gpu_layers;
  if (context_size >= 0) p.context_size = (uint32_t)context_size;
  if (seed >= 0) p.seed = (uint32_t)seed;
  if (verify_checksums >= 0) p.verify_checksums = verify_checksums != 0;
  char *d = to_cstr(env, dir);
  if (!d) return 0;
  struct navigen_engine *e = NULL;
  enum navigen_status st = navigen_engine_open(d, &p, &e);
  free(d);
  if (failed(env, st)) return 0;
  return (jlong)(uintptr_t)e;
}

static void engine_free(JNIEnv *env, jclass cls, jlong engine) {
  (void)env;
  (void)cls;
  navigen_engine_free(PTR(struct navigen_engine, engine));
}

static void cancel(JNIEnv *env, jclass cls, jlong engine) {
  (void)cls;
  failed(env, navigen_cancel(PTR(const struct navigen_engine, engine)));
}

/* Negative k or beams keep the defaults. */
static int predict_params(JNIEnv *env, jint k, jint beams, jboolean exclude,
                          struct navigen_predict_params *p) {
  if (failed(env, navigen_predict_default_params(p))) return 0;
  if (k >= 0) p->k = (size_t)k;
  if (beams >= 0) p->beams = (uint32_t)beams;
  p->exclude_history = exclude == JNI_TRUE;
  return 1;
}

static jbyteArray predict(JNIEnv *env, jclass cls, jlong engine, jobjectArray history, jint k,
                          jint beams, jboolean exclude) {
  (void)cls;
  struct navigen_predict_params p;
  struct strs h;
  if (!predict_params(env, k, beams, exclude, &p) || !to_strs(env, history, &h)) return NULL;
  char *out = NULL;
  enum navigen_status st = navigen_predict(PTR(const struct navigen_engine, engine),
                                           (const char *const *)h.v, h.len, &p, &out);
  strs_free(&h);
  if (failed(env, st)) return NULL;
  return take(env, out);
}

static jbyteArray predict_for_profile(JNIEnv *env, jclass cls, jlong engine, jlong history,
                                      jbyteArray profile, jint k, jint beams, jboolean exclude) {
  (void)cls;
  struct navigen_predict_params p;
  if (!predict_params(env, k, beams, exclude, &p)) return NULL;
  char *prof = to_cstr(env, profile);
  if (!prof) return NULL;
  char *out = NULL;
  enum navigen_status st =
      navigen_predict_for_profile(PTR(const struct navigen_engine, engine),
                                  PTR(const struct navigen_history, history), prof, &p, &out);
  free(prof);
  if (failed(env, st)) return NULL;
  return take(env, out);
}

static jbyteArray register_item(JNIEnv *env, jclass cls, jlong engine, jbyteArray text) {
  (void)cls;
  char *t = to_cstr(env, text);
  if (!t) return NULL;
  char *out = NULL;
  enum navigen_status st = navigen_register_item(PTR(const struct navigen_engine, engine), t, &out);
  free(t);
  if (failed(env, st)) return NULL;
  return take(env, out);
}

/* The token sink: dev.navigen.TextSink.onText(byte[]): boolean, on the calling thread. */
struct sink {
  JNIEnv *env;
  jobject obj;
  jmethodID on_text;
};

static bool on_piece(const char *piece, size_t len, void *user) {
  struct sink *s = user;
  JNIEnv *env = s->env;
  jbyteArray b = to_bytes(env, piece, len);
  if (!b) return false;
  jboolean go = (*env)->CallBooleanMethod(env, s->obj, s->on_text, b);
  (*env)->DeleteLocalRef(env, b);
  /* A throwing sink stops the call; its exception is what the caller gets. */
  return !(*env)->ExceptionCheck(env) && go == JNI_TRUE;
}

/* From a list of item ids (`history` non-null) or from `profile` of an opened history. Negative
 * integers and NaN keep the defaults. */
static jbyteArray instruct(JNIEnv *env, jclass cls, jlong engine, jobjectArray history,
                           jlong hist, jbyteArray profile, jint max_think, jint max_answer,
                           jfloat temperature, jfloat top_p, jint no_repeat, jobject sink_obj) {
  (void)cls;
  struct navigen_instruction_params p;
  if (failed(env, navigen_instruction_default_params(&p))) return NULL;
  if (max_think >= 0) p.max_think_tokens = (uint32_t)max_think;
  if (max_answer >= 0) p.max_answer_tokens = (uint32_t)max_answer;
  if (!isnan(temperature)) p.temperature = temperature;
  if (!isnan(top_p)) p.top_p = top_p;
  if (no_repeat >= 0) p.no_repeat_ngram = (uint32_t)no_repeat;

  struct sink s = {env, sink_obj, NULL};
  if (sink_obj) {
    jclass c = (*env)->GetObjectClass(env, sink_obj);
    s.on_text = (*env)->GetMethodID(env, c, "onText", "([B)Z");
    (*env)->DeleteLocalRef(env, c);
    if (!s.on_text) return NULL;
  }
  navigen_token_callback cb = sink_obj ? on_piece : NULL;
  const struct navigen_engine *e = PTR(const struct navigen_engine, engine);
  char *out = NULL;
  enum navigen_status st;
  if (history) {
    struct strs h;
    if (!to_strs(env, history, &h)) return NULL;
    st = navigen_generate_instruction(e, (const char *const *)h.v, h.len, &p, cb, &s, &out);
    strs_free(&h);
  } else {
    char *prof = to_cstr(env, profile);
    if (!prof && (*env)->ExceptionCheck(env)) return NULL;
    st = navigen_generate_instruction_for_profile(e, PTR(const struct navigen_history, hist), prof,
                                                  &p, cb, &s, &out);
    free(prof);
  }
  if (failed(env, st)) {
    navigen_string_free(out);
    return NULL;
  }
  return take(env, out);
}

/* --- history ---------------------------------------------------------------------------------- */

/* A key store's context: a global reference to the Kotlin KeyStoreBridge and the VM to find the
 * calling thread's JNIEnv. Lives until history_free. */
struct keys {
  JavaVM *vm;
  jobject bridge;
};

static JNIEnv *env_of(struct keys *k) {
  JNIEnv *env = NULL;
  if ((*k->vm)->GetEnv(k->vm, (void **)&env, JNI_VERSION_1_6) != JNI_OK) return NULL;
  /* A pending exception (an earlier callback threw) forbids further Java calls. */
  return (*env)->ExceptionCheck(env) ? NULL : env;
}

/* Looks up the bridge's method `name` and passes the profile as a byte[]; the caller makes the call.
 * 0 with nothing to release when the store cannot be called. */
static int bridge_call(struct keys *k, const char *name, const char *sig, const char *profile,
                       JNIEnv **env, jmethodID *m, jbyteArray *p) {
  *env = env_of(k);
  if (!*env) return 0;
  jclass c = (**env)->GetObjectClass(*env, k->bridge);
  *m = (**env)->GetMethodID(*env, c, name, sig);
  (**env)->DeleteLocalRef(*env, c);
  if (!*m) return 0;
  *p = to_bytes(*env, profile, strlen(profile));
  return *p != NULL;
}

static bool get_key(const char *profile, bool create, uint8_t *key_out, void *user) {
  JNIEnv *env;
  jmethodID m;
  jbyteArray p;
  if (!bridge_call(user, "getKey", "([BZ)[B", profile, &env, &m, &p)) return false;
  struct keys *k = user;
  jbyteArray key = (jbyteArray)(*env)->CallObjectMethod(env, k->bridge, m, p, (jboolean)create);
  (*env)->DeleteLocalRef(env, p);
  bool ok = false;
  if (!(*env)->ExceptionCheck(env) && key && (*env)->GetArrayLength(env, key) == 32) {
    (*env)->GetByteArrayRegion(env, key, 0, 32, (jbyte *)key_out);
    ok = true;
  }
  if (key) (*env)->DeleteLocalRef(env, key);
  return ok;
}

static bool destroy_key(const char *profile, void *user) {
  JNIEnv *env;
  jmethodID m;
  jbyteArray p;
  if (!bridge_call(user, "destroyKey", "([B)Z", profile, &env, &m, &p)) return false;
  struct keys *k = user;
  jboolean ok = (*env)->CallBooleanMethod(env, k->bridge, m, p);
  (*env)->DeleteLocalRef(env, p);
  return !(*env)->ExceptionCheck(env) && ok == JNI_TRUE;
}

static void keys_free(JNIEnv *env, struct keys *k) {
  if (!k) return;
  if (k->bridge) (*env)->DeleteGlobalRef(env, k->bridge);
  free(k);
}

/* out[0] receives the history, out[1] the key store context (0 without a store); both go back to
 * history_free. Negative values keep the defaults (sync: 0 off, 1 on). */
static void history_open(JNIEnv *env, jclass cls, jbyteArray dir, jint sync, jlong max_items,
                         jlong max_age_ms, jobject bridge, jlongArray out) {
  (void)cls;
  struct navigen_history_params p;
  if (failed(env, navigen_history_default_params(&p))) return;
  if (sync >= 0) p.sync_every_append = sync != 0;
  if (max_items >= 0) p.max_items = max_items > UINT32_MAX ? UINT32_MAX : (uint32_t)max_items;
  if (max_age_ms >= 0) p.max_age_ms = max_age_ms;
  struct keys *k = NULL;
  if (bridge) {
    k = calloc(1, sizeof *k);
    if (!k) {
      throw_oom(env);
      return;
    }
    (*env)->GetJavaVM(env, &k->vm);
    k->bridge = (*env)->NewGlobalRef(env, bridge);
    if (!k->bridge) {
      keys_free(env, k);
      throw_oom(env);
      return;
    }
  }
  char *d = to_cstr(env, dir);
  if (!d) {
    keys_free(env, k);
    return;
  }
  struct navigen_history *h = NULL;
  enum navigen_status st;
  if (k) {
    struct navigen_key_store store = {get_key, destroy_key, k};
    st = navigen_history_open_encrypted(d, &p, &store, &h);
  } else {
    st = navigen_history_open(d, &p, &h);
  }
  free(d);
  if (failed(env, st)) {
    keys_free(env, k);
    return;
  }
  jlong v[2] = {(jlong)(uintptr_t)h, (jlong)(uintptr_t)k};
  (*env)->SetLongArrayRegion(env, out, 0, 2, v);
  if ((*env)->ExceptionCheck(env)) {
    navigen_history_free(h);
    keys_free(env, k);
  }
}

static void history_free(JNIEnv *env, jclass cls, jlong history, jlong keys) {
  (void)cls;
  navigen_history_free(PTR(struct navigen_history, history));
  keys_free(env, PTR(struct keys, keys));
}

static void history_append(JNIEnv *env, jclass cls, jlong history, jbyteArray profile,
                           jbyteArray item, jint kind, jlong timestamp_ms) {
  (void)cls;
  char *p = to_cstr(env, profile);
  char *i = p ? to_cstr(env, item) : NULL;
  if (p && i) {
    failed(env, navigen_history_append(PTR(const struct navigen_history, history), p, i,
                                       (uint32_t)kind, timestamp_ms));
  }
  free(p);
  free(i);
}

static jbyteArray history_items(JNIEnv *env, jclass cls, jlong history, jbyteArray profile) {
  (void)cls;
  char *p = to_cstr(env, profile);
  if (!p) return NULL;
  char *out = NULL;
  enum navigen_status st =
      navigen_history_items(PTR(const struct navigen_history, history), p, &out);
  free(p);
  if (failed(env, st)) return NULL;
  return take(env, out);
}

static void history_forget(JNIEnv *env, jclass cls, jlong history, jbyteArray profile) {
  (void)cls;
  char *p = to_cstr(env, profile);
  if (!p) return;
  failed(env, navigen_history_forget(PTR(const struct navigen_history, history), p));
  free(p);
}

static jbyteArray history_export(JNIEnv *env, jclass cls, jlong history, jbyteArray profile,
                                 jlong engine) {
  (void)cls;
  char *p = to_cstr(env, profile);
  if (!p) return NULL;
  char *out = NULL;
  enum navigen_status st =
      navigen_history_export(PTR(const struct navigen_history, history), p,
                             PTR(const struct navigen_engine, engine), &out);
  free(p);
  if (failed(env, st)) return NULL;
  return take(env, out);
}

/* --- registration ----------------------------------------------------------------------------- */

static const JNINativeMethod methods[] = {
    {"abiVersion", "()I", (void *)abi_version},
    {"version", "()[B", (void *)version},
    {"engineOpen", "([BIIIJI)J", (void *)engine_open},
    {"engineFree", "(J)V", (void *)engine_free},
    {"cancel", "(J)V", (void *)cancel},
    {"predict", "(J[[BIIZ)[B", (void *)predict},
    {"predictForProfile", "(JJ[BIIZ)[B", (void *)predict_for_profile},
    {"registerItem", "(J[B)[B", (void *)register_item},
    {"instruct", "(J[[BJ[BIIFFILdev/navigen/TextSink;)[B", (void *)instruct},
    {"historyOpen", "([BIJJLdev/navigen/KeyStoreBridge;[J)V", (void *)history_open},
    {"historyFree", "(JJ)V", (void *)history_free},
    {"historyAppend", "(J[B[BIJ)V", (void *)history_append},
    {"historyItems", "(J[B)[B", (void *)history_items},
    {"historyForget", "(J[B)V", (void *)history_forget},
    {"historyExport", "(J[BJ)[B", (void *)history_export},
};

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *reserved) {
  (void)reserved;
  JNIEnv *env = NULL;
  if ((*vm)->GetEnv(vm, (void **)&env, JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
  jclass c = (*env)->FindClass(env, NATIVE_CLASS);
  if (!c) return JNI_ERR;
  jint n = (jint)(sizeof methods / sizeof methods[0]);
  if ((*env)->RegisterNatives(env, c, methods, n) != JNI_OK) return JNI_ERR;
  /* A shim built against another header would misread every struct it passes. */
  if (navigen_abi_version() != NAVIGEN_ABI_VERSION) {
    jclass e = (*env)->FindClass(env, "java/lang/UnsatisfiedLinkError");
    if (e) (*env)->ThrowNew(env, e, "libnavigen's ABI version differs from the JNI shim's header");
    return JNI_ERR;
  }
  return JNI_VERSION_1_6;
}
