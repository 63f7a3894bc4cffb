# tokd — build, test and run.
#   make            build build/tokd
#   make test       build and run every test (unit + integration)
#   make asan       build and run the unit tests under ASan+UBSan
#   make run        build, fetch the default model, serve it
#   make model      fetch the default model into models/
#   make deps       install missing Debian packages
CC      ?= cc
BUILD   ?= build
SHARED  ?= $(abspath ../shared)
MODEL   ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
PKGS    := libpcre2-8 libmicrohttpd libuv libcjson
OPT     ?= -O2
CFLAGS_BASE := -std=c11 -g $(OPT) -Wall -Wextra -Werror -D_GNU_SOURCE -I. -pthread \
               $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS  ?=
LDLIBS  := $(shell pkg-config --libs $(PKGS) 2>/dev/null || echo -lpcre2-8 -lmicrohttpd -luv -lcjson) -lm -pthread
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm) -lcjson

LIB_DIRS := common config engine kernels/cpu scheduler server
LIB_SRCS := $(filter-out server/main.c,$(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c)))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
TEST_SRCS := $(wildcard tests/unit/test_*.c)
TEST_UTIL := $(filter-out $(TEST_SRCS),$(wildcard tests/unit/*.c))
TEST_BINS := $(TEST_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

# ---- CUDA backend: on when nvcc is found (make CUDA=1 forces it, make CUDA=0 turns it off).
# kernels/cuda/*.cu go into libtokd.a, the C files see TOKD_CUDA (engine/forward_cuda.c), and
# everything links cudart + cuBLAS. Objects remember the setting through $(BUILD)/.cuda_N, so
# switching CUDA on or off rebuilds them. tests/gpu/ binaries are built (not run) by make test.
.DEFAULT_GOAL := all
NVCC      ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
CUDA      ?= $(if $(NVCC),1,0)
ifeq ($(CUDA),1)
CUDA_HOME ?= $(or $(patsubst %/bin/nvcc,%,$(NVCC)),/usr/local/cuda)
NVCC      := $(or $(NVCC),$(CUDA_HOME)/bin/nvcc)
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
NVCCFLAGS ?= -std=c++20 -O3 -g -I. $(CUDA_ARCH) -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror,-fPIC
CUDA_SRCS := $(wildcard kernels/cuda/*.cu)
CUDA_OBJS := $(CUDA_SRCS:%.cu=$(BUILD)/obj/%.o)
CFLAGS_BASE += -DTOKD_CUDA -I$(CUDA_HOME)/include
LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ -ldl -lrt
LIB_OBJS  += $(CUDA_OBJS)
GPU_TESTS := $(patsubst tests/gpu/%.c,$(BUILD)/gpu/%,$(wildcard tests/gpu/test_*.c))

$(BUILD)/obj/%.o: %.cu $(wildcard kernels/cuda/*.h kernels/cuda/*.cuh) kernels/kern.h
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/gpu/%: tests/gpu/%.c $(BUILD)/libtokd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -o $@ $< $(BUILD)/libtokd.a -lcjson $(LDLIBS)

# compile-and-link check of the CUDA build (no GPU needed); make test runs it
.PHONY: cuda_check gpu_tests
gpu_tests: $(GPU_TESTS)
cuda_check: $(BUILD)/tokd $(GPU_TESTS)
	@echo "cuda_check: CUDA objects, tokd and $(words $(GPU_TESTS)) GPU test binaries built (run them with tests/gpu/run.sh)"
test: cuda_check
endif
CUDA_STAMP := $(BUILD)/.cuda_$(CUDA)
$(CUDA_STAMP):
	@mkdir -p $(BUILD)
	@rm -f $(BUILD)/.cuda_*
	@touch $@
$(LIB_OBJS) $(BUILD)/obj/server/main.o: $(CUDA_STAMP)

.PHONY: all deps model run test unit integration asan unit_asan fuzz clean
all: $(BUILD)/tokd

deps:
	@scripts/deps.sh

model: $(MODEL)
$(MODEL):
	scripts/fetch_model.sh $(dir $(MODEL))

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libtokd.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/tokd: $(BUILD)/obj/server/main.o $(BUILD)/libtokd.a
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(TEST_UTIL) $(BUILD)/libtokd.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -o $@ $< $(TEST_UTIL) $(BUILD)/libtokd.a $(CHECK_LIBS) $(LDLIBS)

unit: $(TEST_BINS) $(BUILD)/tokd
	@fail=0; for t in $(TEST_BINS); do \
	  echo "== $$t"; TOKD_SHARED=$(SHARED) TOKD_MODEL=$(abspath $(MODEL)) $$t || fail=1; \
	done; exit $$fail

integration: $(BUILD)/tokd
	@TOKD_SHARED=$(SHARED) TOKD_MODEL=$(abspath $(MODEL)) TOKD_BIN=$(abspath $(BUILD)/tokd) \
	  tests/integration/run.sh

test: deps model
	@test -d $(SHARED)/testdata || { echo "make test: shared test data not found at $(SHARED) (set SHARED=/path/to/shared)"; exit 1; }
	$(MAKE) unit
	$(MAKE) integration

asan: deps model
	$(MAKE) BUILD=build-asan CUDA=0 OPT=-O1 \
	  CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" unit_asan

unit_asan: $(TEST_BINS)
	@fail=0; for t in $(TEST_BINS); do \
	  echo "== $$t"; CK_FORK=no TOKD_SHARED=$(SHARED) TOKD_MODEL=$(abspath $(MODEL)) TOKD_ASAN=1 $$t || fail=1; \
	done; exit $$fail

run: deps model all
	$(BUILD)/tokd serve --model $(MODEL) --host 127.0.0.1 --port 8080

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# libFuzzer targets (clang): build/fuzz/fuzz_gguf, build/fuzz/fuzz_tokenizer
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
fuzz: $(FUZZ_SRCS:tests/fuzz/%.c=$(BUILD)/fuzz/%)
$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIB_SRCS)
	@mkdir -p $(dir $@)
	clang -std=c11 -g -O1 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined -o $@ $< $(LIB_SRCS) $(LDLIBS)
