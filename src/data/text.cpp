#include "data/text.hpp"

#include <algorithm>
#include <filesystem>
#include <set>

#include "data/idx.hpp"
#include "util/error.hpp"

namespace rbn {

namespace {
const char* kEol = "\n";
const char* kUnk = "<unk>";
}  // namespace

Vocab::Vocab(std::string kind, std::vector<std::string> symbols)
    : kind_(std::move(kind)), symbols_(std::move(symbols)) {
  for (int i = 0; i < size(); ++i) {
    if (!index_.emplace(symbols_[i], i).second) throw DataError("vocabulary: duplicate symbol");
    if (symbols_[i] == kUnk) unk_ = i;
  }
}

int Vocab::id(const std::string& s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

// A one-byte symbol is stored as its integer value (a JSON string cannot hold every byte: 0x80
// alone is not UTF-8), a longer one (<unk>) as a string.
nlohmann::json Vocab::to_json() const {
  nlohmann::json syms = nlohmann::json::array();
  for (const auto& s : symbols_)
    if (s.size() == 1)
      syms.push_back(static_cast<int>(static_cast<unsigned char>(s[0])));
    else
      syms.push_back(s);
  return {{"kind", kind_}, {"symbols", syms}};
}

Vocab Vocab::from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("kind") || !j.contains("symbols") || !j["kind"].is_string() ||
      !j["symbols"].is_array())
    throw DataError("vocabulary: expected {kind, symbols}");
  std::vector<std::string> s;
  for (const auto& v : j["symbols"]) {
    if (v.is_number_integer()) {
      const int64_t b = v.get<int64_t>();
      if (b < 0 || b > 255) throw DataError("vocabulary: byte value " + std::to_string(b) + " outside [0, 255]");
      s.emplace_back(1, static_cast<char>(b));
    } else if (v.is_string()) {  // multi-byte symbols; checkpoints before byte values: every symbol
      s.push_back(v.get<std::string>());
    } else {
      throw DataError("vocabulary: a symbol is neither a byte value nor a string");
    }
  }
  if (s.size() < 2) throw DataError("vocabulary: fewer than 2 symbols");
  return Vocab(j["kind"].get<std::string>(), std::move(s));
}

std::vector<int32_t> Vocab::encode_text(const std::string& text, const std::string& what) const {
  std::vector<int32_t> out;
  for (char ch : text) {
    std::string sym(1, ch);
    if (kind_ == "ptb") {
      if (ch == ' ') sym = "_";
      if (ch == '\n') sym = kEol;
    }
    int i = id(sym);
    if (i < 0) i = unk_;
    if (i < 0) throw UsageError(what + ": symbol '" + sym + "' is not in the vocabulary");
    out.push_back(i);
  }
  if (out.empty()) throw UsageError(what + ": empty");
  return out;
}

std::string Vocab::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t i : ids) {
    if (i < 0 || i >= size()) continue;
    const std::string& s = symbols_[i];
    if (kind_ == "ptb" && s == "_")
      out += ' ';
    else if (s == kUnk)
      out += '?';
    else
      out += s;
  }
  return out;
}

std::string Vocab::default_prime() const {
  if (kind_ == "ptb" || kind_ == "text8") return "the ";
  return symbols_.empty() ? "" : symbols_.front() == kUnk && size() > 1 ? symbols_[1] : symbols_.front();
}

std::vector<std::string> ptb_symbols(const std::string& content, const std::string& file) {
  std::vector<std::string> out;
  size_t line = 1, pos = 0;
  while (pos < content.size()) {
    size_t e = content.find('\n', pos);
    if (e == std::string::npos) e = content.size();
    size_t p = pos;
    const size_t before = out.size();
    while (p < e) {
      while (p < e && (content[p] == ' ' || content[p] == '\r')) ++p;
      size_t q = p;
      while (q < e && content[q] != ' ' && content[q] != '\r') ++q;
      if (q > p) {
        std::string sym = content.substr(p, q - p);
        for (unsigned char c : sym)
          if (c < 0x20 || c >= 0x7f)
            throw DataError(file + ":" + std::to_string(line) + ": non-ASCII or control byte in a symbol");
        out.push_back(std::move(sym));
      }
      p = q;
    }
    // a last line without its newline ends with an end-of-line symbol too, unless it is only
    // blanks (Mikolov's files end with "\n ")
    if (e < content.size() || out.size() > before) out.push_back(kEol);
    pos = e + 1;
    ++line;
  }
  return out;
}

void check_text8(const std::string& c, const std::string& file) {
  for (size_t i = 0; i < c.size(); ++i)
    if (!(c[i] == ' ' || (c[i] >= 'a' && c[i] <= 'z')))
      throw DataError(file + ": byte " + std::to_string(static_cast<unsigned char>(c[i])) + " at offset " +
                      std::to_string(i) + " is not a-z or space (text8 has 27 symbols)");
}

namespace {

std::string ptb_file(const std::string& dir, const std::string& split) {
  namespace fs = std::filesystem;
  for (const char* ext : {"", ".gz"}) {
    const fs::path p = fs::path(dir) / ("ptb.char." + split + ".txt" + ext);
    if (fs::exists(p)) return p.string();
  }
  throw DataError(dir + "/ptb.char." + split + ".txt[.gz]: missing");
}

// 90/5/5 of n symbols; every split at least one symbol more than a prediction needs.
void split_909505(const std::vector<int32_t>& all, CharCorpus& c, const std::string& file) {
  const size_t n = all.size();
  if (n < 40) throw DataError(file + ": too short (" + std::to_string(n) + " symbols; at least 40 needed)");
  const size_t a = n * 9 / 10, b = a + (n - a) / 2;
  c.train.assign(all.begin(), all.begin() + static_cast<ptrdiff_t>(a));
  c.valid.assign(all.begin() + static_cast<ptrdiff_t>(a), all.begin() + static_cast<ptrdiff_t>(b));
  c.test.assign(all.begin() + static_cast<ptrdiff_t>(b), all.end());
}

}  // namespace

CharCorpus load_char_corpus(const std::string& task, const std::string& path) {
  CharCorpus c;
  if (task == "ptb") {
    if (!std::filesystem::is_directory(path))
      throw DataError(path + ": a directory with ptb.char.{train,valid,test}.txt[.gz] expected");
    const std::string ftr = ptb_file(path, "train");
    const auto tr = ptb_symbols(read_maybe_gz(ftr), ftr);
    if (tr.size() < 40) throw DataError(ftr + ": too short");
    std::set<std::string> uniq(tr.begin(), tr.end());
    c.vocab = Vocab("ptb", std::vector<std::string>(uniq.begin(), uniq.end()));
    auto encode = [&](const std::vector<std::string>& syms, const std::string& file) {
      std::vector<int32_t> ids;
      ids.reserve(syms.size());
      size_t line = 1;
      for (const auto& s : syms) {
        const int i = c.vocab.id(s);
        if (i < 0)
          throw DataError(file + ":" + std::to_string(line) + ": symbol '" + s + "' does not occur in the training split");
        if (s == kEol) ++line;
        ids.push_back(i);
      }
      return ids;
    };
    c.train = encode(tr, ftr);
    for (const char* sp : {"valid", "test"}) {
      const std::string f = ptb_file(path, sp);
      auto ids = encode(ptb_symbols(read_maybe_gz(f), f), f);
      if (ids.size() < 2) throw DataError(f + ": too short");
      (std::string(sp) == "valid" ? c.valid : c.test) = std::move(ids);
    }
    return c;
  }
  if (task == "text8") {
    const std::string content = read_maybe_gz(path);
    if (content.empty()) throw DataError(path + ": empty file");
    check_text8(content, path);
    std::vector<std::string> syms{" "};
    for (char ch = 'a'; ch <= 'z'; ++ch) syms.emplace_back(1, ch);
    c.vocab = Vocab("text8", syms);
    std::vector<int32_t> all(content.size());
    for (size_t i = 0; i < content.size(); ++i) all[i] = content[i] == ' ' ? 0 : content[i] - 'a' + 1;
    split_909505(all, c, path);  // 90M / 5M / 5M on the real file
    return c;
  }
  if (task == "text") {
    const std::string content = read_maybe_gz(path);
    if (content.empty()) throw DataError(path + ": empty file");
    if (content.size() < 40) throw DataError(path + ": too short (" + std::to_string(content.size()) + " bytes; at least 40 needed)");
    const size_t a = content.size() * 9 / 10;
    std::set<unsigned char> seen(content.begin(), content.begin() + static_cast<ptrdiff_t>(a));
    std::vector<std::string> syms{kUnk};
    for (unsigned char ch : seen) syms.emplace_back(1, static_cast<char>(ch));
    c.vocab = Vocab("bytes", syms);
    std::vector<int32_t> all(content.size());
    for (size_t i = 0; i < content.size(); ++i) {
      const int id = c.vocab.id(std::string(1, content[i]));
      all[i] = id < 0 ? c.vocab.unk() : id;
    }
    split_909505(all, c, path);
    return c;
  }
  throw UsageError("--task: '" + task + "' is not a language-modelling task");
}

}  // namespace rbn
