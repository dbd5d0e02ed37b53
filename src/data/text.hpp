// Character corpora for language modelling (SPEC section 4): Penn Treebank characters (Mikolov's
// files: each line's space-separated symbols plus an end-of-line symbol; 50 classes), text8 (27
// symbols, 90M/5M/5M split) and any text file (bytes, 90/5/5 split, an <unk> symbol for bytes
// unseen in training). The vocabulary comes from the training split and is stored in checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace rbn {

class Vocab {
 public:
  Vocab() = default;
  Vocab(std::string kind, std::vector<std::string> symbols);
  const std::string& kind() const { return kind_; }  // ptb | text8 | bytes
  int size() const { return static_cast<int>(symbols_.size()); }
  const std::vector<std::string>& symbols() const { return symbols_; }
  int id(const std::string& symbol) const;  // -1 if unknown
  int unk() const { return unk_; }           // -1 if none

  nlohmann::json to_json() const;
  static Vocab from_json(const nlohmann::json& j);  // DataError on malformed input

  // Text <-> ids: for ptb, ' ' is the word boundary '_' and '\n' the end-of-line symbol.
  std::vector<int32_t> encode_text(const std::string& text, const std::string& what) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string default_prime() const;

 private:
  std::string kind_ = "bytes";
  std::vector<std::string> symbols_;
  std::map<std::string, int> index_;
  int unk_ = -1;
};

struct CharCorpus {
  Vocab vocab;
  std::vector<int32_t> train, valid, test;
};

// task: "ptb" (path: a directory with ptb.char.{train,valid,test}.txt[.gz]), "text8" (path: the
// text8 file) or "text" (path: any text file). DataError naming the file for every defect.
CharCorpus load_char_corpus(const std::string& task, const std::string& path);

// From memory (fuzzing, tests): "ptb" content of one split is parsed into symbols.
std::vector<std::string> ptb_symbols(const std::string& content, const std::string& name_for_errors);
void check_text8(const std::string& content, const std::string& name_for_errors);

}  // namespace rbn
