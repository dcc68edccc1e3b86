# frozen_string_literal: true

# A stand-in for the BOSH director's job template rendering, for the template tests.
#
# It answers JSON requests, one per line on stdin, with one JSON line each on stdout, until stdin
# closes (so a test session starts Ruby once):
#   {"render": {"job_dir": "jobs/cni", "properties": {...the job's manifest properties...},
#               "spec": {...instance spec: id, index, name, deployment, address, ip, az, networks...},
#               "links": {"<link name>": {"provider": {"job_dir": "jobs/cfnft-nats", "properties": {...}},
#                                          "instances": [{"id", "index", "name", "az", "address", "bootstrap"}],
#                                          "address": "<group DNS name>"}}}}
#     -> {"rendered": {"<destination path>": "<text>", ..., "monit": "<text>"}}
#     or {"error": "Error filling in template 'reconciler.json.erb' (line 12: Can't find property '[\"nats.servers\"]')"}
#   {"yaml": "<path>"} -> {"value": <the YAML document>}   (YAML for the Python side, with Ruby's stdlib)
#
# What it reproduces of BOSH (bosh-template's EvaluationContext and the director's property
# resolution), because the tests rely on exactly these behaviours:
# - a template sees only the properties its job spec declares; each takes the manifest value, else
#   the spec default, else it is unset (nil);
# - p(name) raises for an unset property, p(name, fallback) returns the fallback, p([a, b]) takes the
#   first one set; if_p(*names) runs its block only when all are set, with .else / .else_if_p;
# - spec is an OpenStruct of the instance spec (spec.id, spec.index, spec.address, spec.networks...),
#   plus name and index as in the director;
# - templates are ERB with trim mode '-', and the monit file is a template too;
# - links: link(name) and if_link(name) for the links the job spec consumes; a link's properties are
#   the ones its provider's spec lists under `provides`, with the provider's manifest values or spec
#   defaults; a link the spec does not mark optional must be given, as the director refuses otherwise.

require 'erb'
require 'json'
require 'ostruct'
require 'yaml'

# A property that a template asked for with p() and that is not set (BOSH's own wording).
class UnknownProperty < StandardError
  def initialize(names)
    super("Can't find property '#{names}'")
  end
end

# The block after if_p was skipped: its .else runs.
class ActiveElseBlock
  def initialize(reader)
    @reader = reader
  end

  def else
    yield
  end

  def else_if_p(*names, &block)
    @reader.if_p(*names, &block)
  end
end

# The block after if_p ran: its .else does not.
class InactiveElseBlock
  def else; end

  def else_if_p(*_names)
    InactiveElseBlock.new
  end
end

# p() and if_p() over a tree of properties: a template's own, or a link's.
module PropertyReader
  def p(*args)
    names = Array(args[0])
    names.each do |name|
      value = lookup_property(property_tree, name)
      return value unless value.nil?
    end
    return args[1] if args.length == 2

    raise UnknownProperty, names
  end

  def if_p(*names)
    values = names.map do |name|
      value = lookup_property(property_tree, name)
      return ActiveElseBlock.new(self) if value.nil?

      value
    end
    yield(*values)
    InactiveElseBlock.new
  end

  private

  def lookup_property(collection, name)
    name.split('.').reduce(collection) do |ref, key|
      return nil unless ref.is_a?(Hash)

      ref = ref[key]
      return nil if ref.nil?

      ref
    end
  end
end

# What link(name) returns: the provider's instances and the properties its spec shares.
class Link
  include PropertyReader
  attr_reader :instances, :address

  def initialize(instances, properties, address)
    @instances = instances.map { |i| OpenStruct.new(i) }
    @properties = properties
    @address = address
  end

  private

  def property_tree
    @properties
  end
end

# Everything a BOSH job template can call.
class EvaluationContext
  include PropertyReader
  attr_reader :name, :index, :spec, :raw_properties

  def initialize(spec, properties, links = {})
    @name = spec.dig('job', 'name')
    @index = spec['index']
    @spec = to_openstruct(spec)
    @raw_properties = properties
    @links = links
  end

  def link(name)
    @links.fetch(name) { raise "Can't find link '#{name}'" }
  end

  def if_link(name)
    return ActiveElseBlock.new(self) unless @links.key?(name)

    yield @links[name]
    InactiveElseBlock.new
  end

  def get_binding
    binding
  end

  private

  def property_tree
    @raw_properties
  end

  def to_openstruct(object)
    case object
    when Hash then OpenStruct.new(object.transform_values { |v| to_openstruct(v) })
    when Array then object.map { |v| to_openstruct(v) }
    else object
    end
  end
end

# The director's step before rendering: only declared properties, defaults filled in.
def resolve_properties(job_spec, manifest_properties)
  resolved = {}
  (job_spec['properties'] || {}).each do |name, definition|
    keys = name.split('.')
    value = keys.reduce(manifest_properties) { |ref, key| ref.is_a?(Hash) ? ref[key] : nil }
    value = (definition || {})['default'] if value.nil?
    target = keys[0..-2].reduce(resolved) { |ref, key| ref[key] ||= {} }
    target[keys[-1]] = value
  end
  resolved
end

def render_template(path, context)
  erb = ERB.new(File.read(path), trim_mode: '-')
  erb.filename = File.basename(path)
  erb.result(context.get_binding)
rescue StandardError => e
  where = e.backtrace&.find { |line| line.start_with?("#{File.basename(path)}:") }
  line = where && where.split(':')[1]
  detail = line ? "line #{line}: #{e.message}" : e.message
  raise "Error filling in template '#{File.basename(path)}' (#{detail})"
end

# The links the job consumes, as the director resolves them from their providers.
def resolve_links(job_spec, requested)
  (job_spec['consumes'] || []).each_with_object({}) do |consumed, links|
    name = consumed['name']
    given = requested[name]
    if given.nil?
      raise "Failed to resolve link '#{name}' of type '#{consumed['type']}'" unless consumed['optional']

      next
    end
    provider_dir = given.fetch('provider').fetch('job_dir')
    provider_spec = YAML.safe_load(File.read(File.join(provider_dir, 'spec')))
    provided = (provider_spec['provides'] || []).find { |l| l['type'] == consumed['type'] }
    raise "#{provider_spec['name']} provides no link of type '#{consumed['type']}'" if provided.nil?

    all = resolve_properties(provider_spec, given['provider'].fetch('properties', {}))
    shared = {}
    (provided['properties'] || []).each do |property|
      keys = property.split('.')
      value = keys.reduce(all) { |ref, key| ref.is_a?(Hash) ? ref[key] : nil }
      target = keys[0..-2].reduce(shared) { |ref, key| ref[key] ||= {} }
      target[keys[-1]] = value
    end
    links[name] = Link.new(given.fetch('instances', []), shared, given['address'])
  end
end

def render_job(request)
  job_dir = request.fetch('job_dir')
  job_spec = YAML.safe_load(File.read(File.join(job_dir, 'spec')))
  properties = resolve_properties(job_spec, request.fetch('properties', {}))
  links = resolve_links(job_spec, request.fetch('links', {}))
  spec = request.fetch('spec', {}).merge('job' => { 'name' => job_spec['name'] }, 'properties' => properties)
  context = EvaluationContext.new(spec, properties, links)

  rendered = {}
  (job_spec['templates'] || {}).each do |source, destination|
    rendered[destination] = render_template(File.join(job_dir, 'templates', source), context)
  end
  rendered['monit'] = render_template(File.join(job_dir, 'monit'), context)
  rendered
end

def answer(line)
  request = JSON.parse(line)
  if request.key?('render')
    { 'rendered' => render_job(request['render']) }
  else
    { 'value' => YAML.safe_load(File.read(request.fetch('yaml'))) }
  end
rescue RuntimeError, KeyError, JSON::ParserError, Psych::Exception, SystemCallError => e
  { 'error' => e.message }
end

$stdout.sync = true
$stdin.each_line do |line|
  puts JSON.generate(answer(line))
end
