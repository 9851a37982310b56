// llama.cpp's own JSON-schema-to-GBNF converter (common/json-schema-to-grammar.cpp, the one llama-server
// uses for response_format / json_schema) as a filter: JSON schema on stdin, GBNF on stdout; on a
// schema it cannot convert, the reason on stderr and exit status 1.
//
// llama-cpp-python's LlamaGrammar.from_json_schema uses its own, older Python port instead; this lets
// scripts/json_schema_bench.py (--llama-converter cpp) measure the converter llama.cpp ships.  Build
// against the llama.cpp sources vendored in the llama-cpp-python sdist of the same version:
//
//   pip download --no-deps llama-cpp-python==0.3.36 -d /tmp/sd && tar xzf /tmp/sd/*.tar.gz -C /tmp
//   L=/tmp/llama_cpp_python-0.3.36/vendor/llama.cpp
//   g++ -O1 -std=c++17 -DLLAMACPP_GBNF_STUBS -I$L/common -I$L/include -I$L/ggml/include -I$L/vendor \
//       scripts/llamacpp_gbnf.cpp $L/common/json-schema-to-grammar.cpp $L/common/json-schema.cpp \
//       $L/common/json.cpp $L/common/trie.cpp $L/common/unicode.cpp -o /tmp/llamacpp-gbnf
#include "json-schema-to-grammar.h"
#include "json.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#ifdef LLAMACPP_GBNF_STUBS
// The few helpers the converter takes from common.cpp and ggml (copied from common.cpp), so that
// neither has to be built.
extern "C" void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list a;
    va_start(a, fmt);
    fprintf(stderr, "%s:%d: ", file, line);
    vfprintf(stderr, fmt, a);
    va_end(a);
    abort();
}

std::string string_join(const std::vector<std::string> & values, const std::string & separator) {
    std::ostringstream result;
    for (size_t i = 0; i < values.size(); ++i) {
        if (i > 0) {
            result << separator;
        }
        result << values[i];
    }
    return result.str();
}

std::vector<std::string> string_split(const std::string & str, const std::string & delimiter) {
    std::vector<std::string> parts;
    size_t start = 0;
    size_t end = str.find(delimiter);
    while (end != std::string::npos) {
        parts.push_back(str.substr(start, end - start));
        start = end + delimiter.length();
        end = str.find(delimiter, start);
    }
    parts.push_back(str.substr(start));
    return parts;
}

std::string string_repeat(const std::string & str, size_t n) {
    std::string result;
    result.reserve(str.length() * n);
    for (size_t i = 0; i < n; ++i) {
        result += str;
    }
    return result;
}
#endif

int main() {
    std::stringstream ss;
    ss << std::cin.rdbuf();
    try {
        std::cout << json_schema_to_grammar(common_json::parse(ss.str()), /*force_gbnf=*/true);
        return 0;
    } catch (const std::exception & e) {
        std::cerr << e.what();
        return 1;
    }
}
